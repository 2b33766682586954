"""Faults of the command line, as a user meets them (main.py run from the repository root with
relative paths): each ends in one line naming the cause, before any work and before the work
directory is created; none is silently accepted."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from training_helpers import ROOT, TINY, damage_array_bytes, subprocess_env, tiny_toy_config

from score_sde_jax import checkpoints, cli, inference, preemption, sharding, train_lib

HINT = " (SCORE_SDE_JAX_TRACEBACK=1 shows the traceback)"
TOY = "--config=configs/toy_gmm.py"
OVERRIDES = [f"--config.{k}={v}" for k, v in TINY.items()]


def _rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def _main(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", TOY, *OVERRIDES, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=subprocess_env(**{"XLA_FLAGS": "", "SCORE_SDE_JAX_CACHE": "off", **env}))


def _one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr.splitlines()[-1]


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this user cannot create files in: read-only permissions, or (for root, whom
    permissions do not stop) /sys/kernel, read-only for everyone in containers and VMs."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/kernel")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    pytest.skip("no folder here is read-only for this user")


def test_bad_work_directories_are_one_line_errors(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    line = _one_line(_main("--workdir=", "--mode=train"))
    assert line == ("main.py: error: ValueError: --workdir='' is empty; name a work directory (an "
                    "empty path would mean the current folder)" + HINT)
    line = _one_line(_main(f"--workdir={_rel(a_file)}", "--mode=train"))
    assert line == (f"main.py: error: NotADirectoryError: --workdir={_rel(a_file)} is an existing "
                    "file, not a work directory" + HINT)
    line = _one_line(_main(f"--workdir={_rel(a_file / 'run')}", "--mode=eval"))
    assert line == (f"main.py: error: NotADirectoryError: cannot write into "
                    f"{_rel(a_file / 'run' / 'eval')}: {_rel(a_file)} is a file, not a folder" + HINT)
    readonly = _unwritable_dir(tmp_path)
    out = readonly / "run"
    line = _one_line(_main(f"--workdir={out}", "--mode=train"))
    assert line.startswith(f"main.py: error: PermissionError: cannot write into {out}: {readonly} "
                           "is not writable"), line
    assert a_file.read_text() == "mine\n" and not out.exists()


def test_bad_grad_accum_steps_and_lock_variable_are_refused_before_the_workdir_exists(tmp_path):
    workdir = tmp_path / "run"
    line = _one_line(_main(f"--workdir={_rel(workdir)}", "--mode=train",
                           "--config.training.grad_accum_steps=3"))
    assert line == ("main.py: error: ValueError: config.training.grad_accum_steps=3 does not divide "
                    "config.training.batch_size=64 into equal microbatches" + HINT)
    line = _one_line(_main(f"--workdir={_rel(workdir)}", "--mode=train",
                           SCORE_SDE_JAX_LOCK_STALE_S="5min"))
    assert line == ("main.py: error: ValueError: SCORE_SDE_JAX_LOCK_STALE_S='5min' is not a "
                    "positive number of seconds (unset it for the default, 300)" + HINT)
    assert not workdir.exists()


def test_seeds_with_num_samples_is_an_error(tmp_path):
    line = _one_line(_main(f"--workdir={_rel(tmp_path)}", "--mode=sample", "--seeds=0-3",
                           "--num_samples=8"))
    assert line == ("main.py: error: ValueError: --seeds and --num_samples exclude each other "
                    "(--seeds names the samples to draw, so it also sets their number)" + HINT)


def _write_lock(workdir: Path, text: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / preemption.LOCK_FILE).write_text(text)


@pytest.mark.parametrize("text", ["", "{\"host\": \"h", "[1, 2]", "{\"pid\": \"x\"}"])
def test_an_empty_or_garbled_lock_is_no_live_trainer(tmp_path, caplog, text):
    """A train.lock without a trainer record (empty, cut short, not ours) is taken over with a
    warning saying so, even with a fresh heartbeat -- never reported as "pid ? on host ?"."""
    _write_lock(tmp_path, text)
    with caplog.at_level("WARNING"), preemption.WorkdirLock(tmp_path, stale_after_s=600) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert (f"taking over the lock of {tmp_path}: {tmp_path / preemption.LOCK_FILE} was found, "
            "but it holds no trainer record (an empty or damaged file") in caplog.text
    assert "?" not in caplog.text


def test_bad_lock_environment_variables_are_named(monkeypatch, tmp_path):
    for value in ("abc", "-5", "0", "nan"):
        monkeypatch.setenv(preemption.HEARTBEAT_ENV, value)
        with pytest.raises(ValueError, match=f"SCORE_SDE_JAX_LOCK_HEARTBEAT_S='{value}' is not a "
                                             "positive number of seconds"):
            preemption.WorkdirLock(tmp_path)
    monkeypatch.setenv(preemption.HEARTBEAT_ENV, "2.5")
    assert preemption.WorkdirLock(tmp_path).heartbeat_s == 2.5


def test_ctrl_c_in_sample_mode_does_not_print_the_training_message(tmp_path):
    config = tiny_toy_config()
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    snapshots = checkpoints.Checkpointer(checkpoints.step_dirs(tmp_path)[0])
    snapshots.save(state, config)
    snapshots.close()
    # SIGINT as from a terminal: a test runner started in the background ignores it, and so
    # would main.py, inheriting that (preexec_fn cannot reset it: JAX's threads forbid forking)
    terminal = ("import runpy, signal, sys; signal.signal(signal.SIGINT, "
                "signal.default_int_handler); sys.argv = sys.argv[1:]; "
                "runpy.run_path('main.py', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", terminal, "main.py", TOY, *OVERRIDES,
                             f"--workdir={_rel(tmp_path)}", "--mode=sample", "--num_samples=100000",
                             "--config.eval.batch_size=8"],
                            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=subprocess_env(XLA_FLAGS="", SCORE_SDE_JAX_CACHE="off"))
    try:
        deadline, lines = time.time() + 120, []
        while time.time() < deadline:
            lines.append(proc.stderr.readline())
            if "drawing 100000 samples" in lines[-1] or not lines[-1]:
                break
        assert "drawing 100000 samples" in lines[-1], "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert rest.splitlines()[-1] == "main.py: interrupted"
    assert "checkpoint" not in rest and "Traceback" not in rest


def test_grad_accum_check_before_training_names_the_key():
    mesh = sharding.make_mesh()  # 8 CPU devices in the tests
    assert train_lib.check_grad_accum(tiny_toy_config(**{"training.grad_accum_steps": 8}), mesh) == 8
    with pytest.raises(ValueError, match=r"grad_accum_steps=16 makes microbatches of 4, not a "
                                         r"multiple of the number of devices \(8\)"):
        train_lib.check_grad_accum(tiny_toy_config(**{"training.grad_accum_steps": 16}), mesh)
    with pytest.raises(ValueError, match=r"grad_accum_steps=0 must be a positive integer"):
        train_lib.check_grad_accum(tiny_toy_config(**{"training.grad_accum_steps": 0}), mesh)


def test_sample_refuses_a_checkpoint_with_damaged_bytes(tmp_path):
    config = tiny_toy_config()
    directory = checkpoints.step_dirs(tmp_path)[0]
    snapshots = checkpoints.Checkpointer(directory)
    snapshots.save(train_lib.create_train_state(config, jax.random.PRNGKey(0)), config)
    snapshots.close()

    def ema_damaged() -> bool:  # the damage must hit the EMA weights, which sampling reads
        try:
            checkpoints.load_ema_params(config, tmp_path)
        except checkpoints.CorruptCheckpointError as e:
            return "the bytes of params_ema/" in str(e)
        return False

    damage_array_bytes(directory / "0", ema_damaged)
    line = _one_line(_main(f"--workdir={_rel(tmp_path)}", "--mode=sample"))
    assert re.fullmatch(r"main\.py: error: CorruptCheckpointError: checkpoint \S+/checkpoints/0 is "
                        r"corrupt: the bytes of params_ema/\S+ do not match the checksum written "
                        r"with it" + re.escape(HINT), line), line
    assert not (tmp_path / "samples").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system (tmpfs; needs root, as in containers), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_during_a_checkpoint_is_one_line(small_disk):
    """Training on 8 devices onto a disk that fills up: orbax's thread tracebacks and its "Event
    loop is closed" noise are silenced; the one line is the OS error, and no half-written
    checkpoint folder is left behind."""
    out = subprocess.run([sys.executable, "main.py", TOY, *OVERRIDES, "--config.training.n_iters=60",
                          f"--workdir={_rel(small_disk / 'run')}", "--mode=train"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240,
                         env=subprocess_env(SCORE_SDE_JAX_CACHE="off",
                                            XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    line = _one_line(out)
    assert "Event loop is closed" not in out.stderr and "raised an exception" not in out.stderr
    assert all(x.startswith(("INFO ", "WARNING ")) for x in out.stderr.splitlines()[:-1]), out.stderr
    assert re.fullmatch(
        r"main\.py: error: CheckpointWriteError: \[Errno 28\] No space left on device: the checkpoint "
        rf"of step (10|15|20) cannot be written into {ROOT}/{re.escape(_rel(small_disk))}/run/"
        r"checkpoints(-meta)? \(\d+(\.\d)? (bytes|kB) free there\); make room and run the same "
        r"command again: training resumes from the last complete checkpoint" + re.escape(HINT),
        line), line
    assert not list(small_disk.rglob("*orbax-checkpoint-tmp*"))


def test_a_failed_checkpoint_write_names_the_os_error_and_removes_its_folder(tmp_path, monkeypatch):
    """As tensorstore reports a full disk (a ValueError with the OS error's code): the save
    raises CheckpointWriteError (an OSError, errno 28) and removes its half-written folder."""
    config = tiny_toy_config()
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    saver = checkpoints.Checkpointer(tmp_path)
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        real_save(self, step, *args, **kwargs)
        os.rename(tmp_path / str(step), tmp_path / f"{step}.orbax-checkpoint-tmp")  # as if cut short
        raise ValueError('RESOURCE_EXHAUSTED: Failed writing: "x": Failed to write 6418 bytes to '
                         "file 9: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(OSError) as e:
        saver.save(state, config)
    assert isinstance(e.value, checkpoints.CheckpointWriteError) and e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(f"[Errno 28] No space left on device: the checkpoint of step 0 "
                                   f"cannot be written into {tmp_path} (")
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_without_its_metadata_file(tmp_path):
    """A checkpoint folder that lost ``state/_METADATA``: training falls back to the previous
    checkpoint with a warning; sampling refuses it in one line (no "Event loop is closed")."""
    config = tiny_toy_config(**{"training.n_iters": 5})
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    snapshots, preempted = checkpoints.step_dirs(tmp_path)
    for directory, step in ((snapshots, 5), (preempted, 8)):
        saver = checkpoints.Checkpointer(directory)
        saver.save(state.replace(step=jax.numpy.int32(step)), config)
        saver.close()
    (preempted / "8" / "state" / "_METADATA").unlink()
    eight = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = _main(f"--workdir={_rel(tmp_path)}", "--mode=sample", **eight)
    line = _one_line(out)
    assert "Event loop is closed" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    assert line.endswith("/checkpoints-meta/8 is unreadable: its metadata cannot be read "
                         "(FileNotFoundError: Metadata file (named _METADATA) does not exist at "
                         f"{ROOT / _rel(preempted / '8' / 'state')}.)" + HINT), line
    out = _main(f"--workdir={_rel(tmp_path)}", "--mode=train", "--config.training.n_iters=5", **eight)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "/checkpoints-meta/8 is unreadable" in out.stderr and "trying an older checkpoint" in out.stderr
    assert "resuming from" in out.stderr and "/checkpoints/5 at step 5" in out.stderr


def test_nan_images_to_encode_are_named_before_the_solver_runs(tmp_path):
    config = tiny_toy_config()
    saver = checkpoints.Checkpointer(checkpoints.step_dirs(tmp_path)[0])
    saver.save(train_lib.create_train_state(config, jax.random.PRNGKey(0)), config)
    saver.close()
    points = np.zeros((4, 2), np.float32)
    points[2, 1] = np.nan
    np.save(tmp_path / "points.npy", points)
    out = _main(f"--workdir={_rel(tmp_path)}", "--mode=encode", f"--images={_rel(tmp_path / 'points.npy')}")
    assert _one_line(out) == (f"main.py: error: ValueError: image file {_rel(tmp_path / 'points.npy')} "
                              "holds 1 non-finite value(s) (NaN or inf) of 8; images must be finite "
                              "numbers" + HINT)
    assert len(out.stderr.splitlines()) == 1, out.stderr  # nothing compiled or run before
    assert not (tmp_path / "latents").exists()


def test_eval_without_inception_weights_leaves_no_eval_folder(tmp_path):
    """FID needs the Inception weights: their absence is one line before any work and before
    ``eval/`` exists; weights that fail to load later leave no empty ``eval/`` either."""
    run, digits = tmp_path / "run", "--config=configs/digits.py"

    def evaluate(*args):
        return subprocess.run([sys.executable, "main.py", digits, f"--workdir={_rel(run)}",
                               "--mode=eval", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=subprocess_env(XLA_FLAGS="", SCORE_SDE_JAX_CACHE="off"))

    line = _one_line(evaluate())
    assert line.startswith("main.py: error: ValueError: config.eval.inception_path is not set. "
                           "Download pytorch-fid's weights"), line
    missing = _rel(tmp_path / "fid_inception.npz")
    line = _one_line(evaluate(f"--config.eval.inception_path={missing}"))
    assert line.startswith(f"main.py: error: FileNotFoundError: FID Inception weights not found at "
                           f"'{missing}'"), line
    assert not run.exists()
    (run / "checkpoints" / "1000" / "state").mkdir(parents=True)  # a checkpoint's folder
    (tmp_path / "fid_inception.npz").write_text("not an npz\n")
    line = _one_line(evaluate(f"--config.eval.inception_path={missing}", "--config.eval.end_ckpt=1"))
    assert line.startswith(f"main.py: error: ValueError: {missing} is not a readable .npz file"), line
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


def test_samples_that_cannot_fit_the_disk_are_refused_before_any_work(tmp_path, monkeypatch):
    """2 MB free: 100 000 toy samples (about 4 MB of part files and .npz) are refused before
    the checkpoint is read and before the output folder exists; 1 000 go ahead."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cli.shutil, "disk_usage",
                        lambda path: usage._replace(free=2 * 1024 * 1024))

    def load_model(*args, **kwargs):
        raise RuntimeError("load_model was called")

    monkeypatch.setattr(inference.common, "load_model", load_model)
    config, out = tiny_toy_config(), tmp_path / "out"
    with pytest.raises(cli.NotEnoughSpaceError) as e:
        inference.sample(config, tmp_path, 100_000, out)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == (f"[Errno 28] No space left on device: 100000 samples need about 4.1 MB in "
                            f"{out}, but {tmp_path} has 2.0 MB free; draw fewer (--num_samples) or "
                            "write them elsewhere (--sample_dir)")
    assert not out.exists()
    with pytest.raises(RuntimeError, match="load_model was called"):
        inference.sample(config, tmp_path, 1_000, out)


def test_samples_larger_than_a_small_disk_are_one_line(small_disk, tmp_path):
    out = _rel(small_disk / "samples")
    line = _one_line(_main(f"--workdir={_rel(tmp_path)}", "--mode=sample", "--num_samples=1000000",
                           f"--sample_dir={out}"))
    assert re.fullmatch(r"main\.py: error: NotEnoughSpaceError: \[Errno 28\] No space left on device: "
                        rf"1000000 samples need about 31\.5 MB in {re.escape(out)}, but "
                        rf"{re.escape(str(ROOT / _rel(small_disk)))} has 1\.0 MB free; draw fewer "
                        r"\(--num_samples\) or write them elsewhere \(--sample_dir\)" + re.escape(HINT),
                        line), line
    assert not (small_disk / "samples").exists()
