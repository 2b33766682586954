"""Orbax checkpoints: exact round trip, atomic writes, clear errors, relative paths, and the
fallback to an older checkpoint when the newest is unreadable or incomplete. (Kills and signals
during training: tests/test_preemption.py.)"""

import asyncio
import gc
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest
from flax import serialization, traverse_util
from training_helpers import damage_array_bytes, max_abs_diff, tiny_toy_config

from score_sde_jax import checkpoints, run_lib, train_lib
from score_sde_jax.checkpoints import store


@pytest.fixture(scope="module")
def state():
    return train_lib.create_train_state(tiny_toy_config(), jax.random.PRNGKey(0))


def _changed(state, step: int):
    """A state whose every leaf differs from ``state`` (so a round trip is a real test)."""
    bump = lambda x: x + 1 if np.issubdtype(np.asarray(x).dtype, np.floating) else x  # noqa: E731
    return state.replace(step=np.int32(step), params=jax.tree_util.tree_map(bump, state.params),
                         rng=state.rng + 7)


def test_round_trip_is_exact_and_keeps_only_the_last(tmp_path, state):
    ckpt = checkpoints.Checkpointer(tmp_path, max_to_keep=1)
    ckpt.save(_changed(state, 3), tiny_toy_config())
    path = ckpt.save(_changed(state, 6), tiny_toy_config())
    ckpt.close()
    assert path == tmp_path / "6" and checkpoints.all_steps(tmp_path) == [6]
    restored = checkpoints.restore(tmp_path, state)  # latest
    want = _changed(state, 6)
    assert max_abs_diff(restored, want) == 0.0
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    assert checkpoints.read_meta(tmp_path, 6)["config"]["model"]["nf"] == 32


def test_half_written_checkpoint_is_invisible_and_cleaned_up(tmp_path, state):
    ckpt = checkpoints.Checkpointer(tmp_path)
    ckpt.save(_changed(state, 2))
    ckpt.close()
    # what a kill in the middle of a save leaves behind: orbax's tmp directory
    shutil.copytree(tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp")
    assert checkpoints.all_steps(tmp_path) == [2]
    assert int(checkpoints.restore(tmp_path, state).step) == 2
    ckpt = checkpoints.Checkpointer(tmp_path)  # the next run's manager removes it
    ckpt.save(_changed(state, 6))
    ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["2", "6"]


def test_mismatched_checkpoint_names_path_key_and_config(tmp_path, state):
    checkpoints.Checkpointer(tmp_path).save(_changed(state, 5), tiny_toy_config())
    config = tiny_toy_config(**{"model.nf": 16})
    other = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    with pytest.raises(checkpoints.CheckpointMismatchError) as e:
        checkpoints.restore(tmp_path, other, config=config)
    msg = str(e.value)
    assert str(tmp_path / "5") in msg
    assert "params/Dense_0/bias has shape (128,) in the checkpoint but (64,)" in msg
    assert "model.nf=32 (now 16)" in msg


# orbax leaves a tensorstore task behind when a read fails; its late error is not ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_missing_and_corrupt_checkpoints_are_reported_by_name(tmp_path, state):
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="no complete checkpoint in"):
        checkpoints.restore(tmp_path / "nothing", state)
    checkpoints.Checkpointer(tmp_path).save(_changed(state, 1))
    with pytest.raises(checkpoints.CheckpointNotFoundError, match=r"steps in .*: \[1\]"):
        checkpoints.restore(tmp_path, state, step=9)
    for f in (tmp_path / "1" / "state").rglob("*"):  # damage every data file
        if f.is_file() and "metadata" not in f.name.lower():
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoints.CorruptCheckpointError, match=str(tmp_path / "1")):
        checkpoints.restore(tmp_path, state)


# orbax leaves a tensorstore task behind when a read fails; its late error is not ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_training_resumes_from_an_older_checkpoint_when_the_latest_is_corrupt(tmp_path, state, caplog):
    config = tiny_toy_config(**{"training.n_iters": 5})
    snapshots, preemption = checkpoints.step_dirs(tmp_path)
    checkpoints.Checkpointer(snapshots).save(_changed(state, 5), config)
    checkpoints.Checkpointer(preemption).save(_changed(state, 8), config)
    (preemption / "8" / "state" / "manifest.ocdbt").write_bytes(b"broken")
    with caplog.at_level("WARNING"):
        resumed = run_lib.train(config, str(tmp_path))  # already at n_iters: nothing to run
    assert int(resumed.step) == 5
    assert max_abs_diff(resumed.params, _changed(state, 5).params) == 0.0
    assert f"checkpoint {preemption / '8'} is unreadable" in caplog.text
    (snapshots / "5" / "state" / "manifest.ocdbt").write_bytes(b"broken")
    with pytest.raises(checkpoints.CorruptCheckpointError, match="none of the checkpoints"):
        run_lib.train(config, str(tmp_path))


def test_relative_paths_and_incomplete_folders_fall_back_to_the_newest_complete(
        tmp_path, state, caplog, monkeypatch):
    """A relative directory works for save and restore; a numbered folder that is empty or
    lacks ``state/`` is skipped with a warning (restore, training resume), and training can
    later write a real checkpoint of that step."""
    monkeypatch.chdir(tmp_path)
    config = tiny_toy_config(**{"training.n_iters": 5})
    ckpt = checkpoints.Checkpointer("run/checkpoints")
    ckpt.save(_changed(state, 5), config)
    ckpt.close()
    (tmp_path / "run" / "checkpoints" / "999").mkdir()  # mkdir checkpoints/999
    shutil.copytree(tmp_path / "run" / "checkpoints" / "5", tmp_path / "run" / "checkpoints-meta" / "8")
    shutil.rmtree(tmp_path / "run" / "checkpoints-meta" / "8" / "state")  # meta item only
    with caplog.at_level("WARNING"):
        assert checkpoints.all_steps("run/checkpoints") == [5]
        assert int(checkpoints.restore("run/checkpoints", state).step) == 5
        resumed = run_lib.train(config, "run")  # already at n_iters: nothing to run
    assert int(resumed.step) == 5
    assert max_abs_diff(resumed.params, _changed(state, 5).params) == 0.0
    for bad in ("checkpoints/999", "checkpoints-meta/8"):
        assert f"{tmp_path / 'run' / bad} is not a complete checkpoint" in caplog.text
    ckpt = checkpoints.Checkpointer("run/checkpoints")
    ckpt.save(_changed(state, 999))
    ckpt.close()
    assert checkpoints.all_steps("run/checkpoints") == [5, 999]


def test_damaged_array_bytes_are_named_and_training_falls_back(tmp_path, state, monkeypatch, caplog):
    """Bytes damaged in place (same file size) restore silently without the checksums; with
    them the restore names the array, and a resume falls back to the previous checkpoint."""
    config = tiny_toy_config(**{"training.n_iters": 5})
    snapshots, preemption = checkpoints.step_dirs(tmp_path)
    checkpoints.Checkpointer(snapshots).save(_changed(state, 5), config)
    checkpoints.Checkpointer(preemption).save(_changed(state, 8), config)
    sizes = {p: p.stat().st_size for p in (preemption / "8").rglob("*") if p.is_file()}
    want = traverse_util.flatten_dict(serialization.to_state_dict(_changed(state, 8)), sep="/")
    differ = []

    def silent_damage() -> bool:  # what orbax alone gives: no error, different numbers
        with monkeypatch.context() as m:
            m.setattr(store, "_verify", lambda path, restored: None)
            try:
                silent = checkpoints.restore(preemption, state)
            except checkpoints.CorruptCheckpointError:
                return False  # orbax saw this one itself
        got = traverse_util.flatten_dict(serialization.to_state_dict(silent), sep="/")
        differ[:] = [k for k in want if not np.array_equal(np.asarray(got[k]), np.asarray(want[k]),
                                                           equal_nan=True)]
        return bool(differ)

    damage_array_bytes(preemption / "8", silent_damage)
    assert {p: p.stat().st_size for p in sizes} == sizes
    with pytest.raises(checkpoints.CorruptCheckpointError) as e:
        checkpoints.restore(preemption, state)
    named = re.fullmatch(rf"checkpoint {re.escape(str(preemption / '8'))} is corrupt: the bytes of "
                         r"(\S+) do not match the checksum written with it", str(e.value))
    assert named and named.group(1) in differ, str(e.value)
    with caplog.at_level("WARNING"):
        resumed = run_lib.train(config, str(tmp_path))  # already at n_iters: nothing to run
    assert int(resumed.step) == 5
    assert max_abs_diff(resumed.params, _changed(state, 5).params) == 0.0
    assert f"{e.value}; trying an older checkpoint" in caplog.text


def test_a_truncated_array_file_is_one_readable_warning(tmp_path, state, caplog):
    """A data file cut short: the fallback's warning names the checkpoint in one line, without
    TensorStore's spec (a pybind repr) that the raw error carries."""
    config = tiny_toy_config(**{"training.n_iters": 5})
    snapshots, preemption = checkpoints.step_dirs(tmp_path)
    checkpoints.Checkpointer(snapshots).save(_changed(state, 5), config)
    checkpoints.Checkpointer(preemption).save(_changed(state, 8), config)
    data = max((p for p in (preemption / "8" / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        restored, path = checkpoints.restore_latest(tmp_path, state, config)
    assert path == snapshots / "5" and int(restored.step) == 5
    warning = next(r.getMessage() for r in caplog.records if "unreadable" in r.getMessage())
    assert warning.startswith(f"checkpoint {preemption / '8'} is unreadable (")
    assert "pybind" not in warning and "TensorStore(" not in warning and "\n" not in warning


def _abandoned_task_error(filename: str) -> None:
    """Create, fail and abandon an asyncio task whose coroutine is defined in ``filename``
    (as orbax's are after a failed save): its garbage collection logs "Task exception was
    never retrieved" on the ``asyncio`` logger."""
    scope: dict = {}
    exec(compile("async def write():\n    raise ValueError('No space left on device')\n",
                 filename, "exec"), scope)
    loop = asyncio.new_event_loop()
    task = loop.create_task(scope["write"]())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del task
    gc.collect()


def test_asyncio_reports_of_abandoned_orbax_tasks_are_silenced_and_others_kept(caplog):
    checkpoints.faults.quiet_orbax()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _abandoned_task_error(os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py"))
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
        _abandoned_task_error(os.path.join(os.sep, "site-packages", "mine", "x.py"))
        kept = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        assert len(kept) == 1 and kept[0].startswith("Task exception was never retrieved"), kept


def _abandoned_future_error(message: str) -> None:
    """A failed asyncio future nobody awaited (as tensorstore's are after a failed orbax
    save): its garbage collection logs "Future exception was never retrieved"."""
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(ValueError(message))
    loop.close()
    del future
    gc.collect()


def test_asyncio_reports_of_abandoned_tensorstore_futures_are_silenced_and_others_kept(caplog):
    """The full-disk run's stray lines: a tensorstore write error left in a future (its text
    names the ``tensorstore_spec``) is dropped, any other future's error still shows."""
    checkpoints.faults.quiet_orbax()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _abandoned_future_error('RESOURCE_EXHAUSTED: Error writing "x/.zarray": No space left on '
                                "device [tensorstore_spec='{\"driver\":\"zarr\"}'] [os_error_code='28']")
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
        _abandoned_future_error("No space left on device")
        kept = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        assert len(kept) == 1 and kept[0].startswith("Future exception was never retrieved"), kept
