"""Orbax checkpoints: exact round trip, atomic writes, clear errors, and training that survives
SIGKILL (right after a checkpoint and in the middle of writing one) with the same end result."""

import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from training_helpers import (
    ROOT,
    main_cmd,
    max_abs_diff,
    run_main,
    subprocess_env,
    tiny_toy_config,
)

from score_sde_jax import checkpoints, run_lib, train_lib


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
    with pytest.raises(checkpoints.MismatchedCheckpointError) as e:
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


def _wait_for(predicate, proc, timeout=240.0):
    start = time.monotonic()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)


def test_kill_during_and_after_checkpoints_then_resume_gives_the_same_params(tmp_path):
    """SIGKILL right after the checkpoint of step 10, restart, SIGKILL while step 15's checkpoint
    is half-written, restart: training resumes from step 10 and ends as an uninterrupted run."""
    workdir, meta = tmp_path / "run", tmp_path / "run" / "checkpoints-meta"
    env = {"XLA_FLAGS": "",  # one device: this test is about files, not data parallelism
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    reference = run_main(tmp_path / "reference", env=subprocess_env(**env))
    assert reference.returncode == 0, reference.stderr[-3000:]

    def start(pause: str) -> subprocess.Popen:
        return subprocess.Popen(main_cmd(workdir), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=subprocess_env(**env, **{checkpoints.PAUSE_ENV: pause}))

    def half_written_15() -> bool:
        return any(p.name.startswith("15.orbax-checkpoint-tmp") for p in meta.iterdir())

    # 1. killed right after the preemption checkpoint of step 10 is complete
    proc = start("after:10:120")
    _wait_for(lambda: checkpoints.all_steps(meta) == [10], proc)  # 5 deleted, 10 complete
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert checkpoints.all_steps(meta) == [10]

    # 2. restarted; killed while the checkpoint of step 15 is being written
    proc = start("during:15:120")
    _wait_for(lambda: meta.is_dir() and half_written_15(), proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert f"resuming from {meta / '10'} at step 10" in err, err[-2000:]
    assert checkpoints.all_steps(meta) == [10] and half_written_15()

    # 3. restarted without interruption: resumes from 10 again and finishes at 20
    done = run_main(workdir, env=subprocess_env(**env))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {meta / '10'} at step 10" in done.stderr
    assert "step 15: training_loss" in done.stderr and "finished at step 20" in done.stderr
    assert sorted(os.listdir(meta)) == ["20"]  # the half-written 15 was cleaned up
    assert checkpoints.all_steps(workdir / "checkpoints") == [20]  # run 1 died before snapshot 10
    template = train_lib.create_train_state(tiny_toy_config(), jax.random.PRNGKey(0))
    want = checkpoints.restore(tmp_path / "reference" / "checkpoints", template, 20)
    got = checkpoints.restore(workdir / "checkpoints", template, 20)
    assert max_abs_diff(got, want) == 0.0  # params, EMA, Adam moments, step and rng
