"""Training stopped the ways people and clusters stop it -- SIGTERM, Ctrl-C (once and twice),
SIGKILL in the middle of the final snapshot -- and a second trainer on the same work directory,
all with relative work directories as the README types them: the resumed run ends with exactly
the parameters, snapshots and metrics of an uninterrupted one. Plus the workdir lock's rules."""

import json
import os
import signal
import socket
import subprocess
import sys
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

from score_sde_jax import checkpoints, logging_utils, preemption, train_lib

ENV = {"XLA_FLAGS": "",  # one device: these tests are about files and signals
       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
SAMPLE = {"model.num_scales": 20}  # a short sampler for the sample commands
FLOW = {"training.eval_freq": 4}  # evaluations at 4, 8, ...: their batches must line up too


def _env(tmp_path, **extra):
    return subprocess_env(**ENV, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), **extra)


def _wait_for(predicate, proc, timeout=240.0):
    start = time.monotonic()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)


def _only(directory, step) -> bool:
    """``directory`` holds the complete checkpoint ``step`` and nothing else (the older one
    is deleted, not just being deleted)."""
    return directory.is_dir() and os.listdir(directory) == [str(step)] \
        and checkpoints.all_steps(directory) == [step]


def _files(workdir):
    """Every file of a work directory with its size and mtime (but the lock's heartbeat)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob("*")
            if p.is_file() and p.name != preemption.LOCK_FILE}


def test_stopped_killed_and_resumed_training_equals_an_uninterrupted_run(tmp_path):
    """From another current directory with ``--workdir run``: SIGTERM at step 6; while a run
    is live, a second trainer is refused and sampling works; Ctrl-C twice at step 10, Ctrl-C at
    step 16, SIGKILL while the final snapshot is half-written; the resumed runs write the
    snapshots the stopped ones missed and end exactly where an uninterrupted run (from the
    repository root, run twice) does."""
    rel_ref = os.path.relpath(tmp_path / "reference", ROOT)  # relative to the repository root
    reference = run_main(rel_ref, env=_env(tmp_path), **FLOW)
    assert reference.returncode == 0, reference.stderr[-3000:]
    again = run_main(rel_ref, env=_env(tmp_path), **FLOW)  # "resume" of a finished run
    assert again.returncode == 0 and "at step 20 of 20" in again.stderr, again.stderr[-3000:]

    cwd, workdir = tmp_path, tmp_path / "run"
    snaps, meta = checkpoints.step_dirs(workdir)

    def start(pause: str) -> subprocess.Popen:
        return subprocess.Popen(main_cmd("run", **FLOW), cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=_env(tmp_path, **{checkpoints.PAUSE_ENV: pause}))

    def finish(proc) -> tuple[int, str]:
        _, err = proc.communicate(timeout=240)
        return proc.returncode, err

    # 1. SIGTERM while paused after the checkpoint of 5: the update in flight (6) is finished
    proc = start("after:5:3")
    _wait_for(lambda: _only(meta, 5), proc)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 143, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"WARNING stopped by SIGTERM at step 6; checkpoint {meta / '6'} "
                           "written; resume with: python ") and "--workdir=run --mode=train" in line
    assert checkpoints.all_steps(meta) == [6] and checkpoints.all_steps(snaps) == []

    # 2. resumed and paused after the checkpoint of 10: a second trainer is refused at once and
    #    writes nothing, sampling reads the live work directory; then Ctrl-C twice stops at
    #    once (no snapshot 10: it came next)
    proc = start("after:10:120")
    _wait_for(lambda: _only(meta, 10), proc)
    before = _files(workdir)
    second = run_main("run", cwd=cwd, env=_env(tmp_path), **FLOW)
    assert second.returncode == 1
    assert (f"is being trained by pid {proc.pid} on host {socket.gethostname()}, started "
            in second.stderr.splitlines()[-1]), second.stderr[-3000:]
    assert _files(workdir) == before
    sampled = run_main("run", cwd=cwd, env=_env(tmp_path), mode="sample", **SAMPLE)  # no lock
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert list((workdir / "samples").glob("*step_10.npz"))
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130 and "interrupted at once" in err, err[-3000:]
    assert f"resuming from {meta / '6'} at step 6" in err
    assert checkpoints.all_steps(meta) == [10] and checkpoints.all_steps(snaps) == []

    # 3. resumed: writes the missing snapshot 10; Ctrl-C after the checkpoint of 15 stops at 16
    proc = start("after:15:3")
    _wait_for(lambda: _only(meta, 15), proc)
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130 and "stopped by SIGINT at step 16" in err, err[-3000:]
    assert "wrote the missing snapshot" in err
    assert checkpoints.all_steps(meta) == [16] and checkpoints.all_steps(snaps) == [10]

    # 4. resumed; SIGKILL while the final snapshot (20) is half-written, after checkpoints-meta/20
    proc = start("during:20:120:checkpoints")
    _wait_for(lambda: any(p.name.startswith("20.orbax-checkpoint-tmp") for p in snaps.iterdir()),
              proc)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert checkpoints.all_steps(meta) == [20] and checkpoints.all_steps(snaps) == [10]

    # 5. resumed at 20 = n_iters: writes snapshot 20, removes the leftover; then it samples
    done = run_main("run", cwd=cwd, env=_env(tmp_path), **FLOW)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(snaps)) == ["10", "20"]
    template = train_lib.create_train_state(tiny_toy_config(), jax.random.PRNGKey(0))
    for step in (10, 20):  # params, EMA, Adam moments, step and rng: bitwise
        want = checkpoints.restore(tmp_path / "reference" / "checkpoints", template, step)
        assert max_abs_diff(checkpoints.restore(snaps, template, step), want) == 0.0
    got, want = ([{k: v for k, v in r.items() if k not in ("time", "steps_per_sec")}
                  for r in logging_utils.read_metrics(d)] for d in (workdir, tmp_path / "reference"))
    assert [r["step"] for r in got] == [4, 5, 8, 10, 12, 15, 16, 20, 20]  # no duplicates
    assert got == want  # training and evaluation losses, bitwise
    assert not (workdir / preemption.LOCK_FILE).exists()


def test_convert_then_sample_with_relative_work_directories(tmp_path):
    """``python -m score_sde_jax.convert ... --workdir REL`` from the repository root, then
    ``main.py --mode sample --workdir REL`` from the repository root and from another folder."""
    from flax import serialization

    from configs.toy_gmm import get_config

    params = train_lib.create_train_state(get_config(), jax.random.PRNGKey(3)).params
    official = tmp_path / "checkpoint_7"
    official.write_bytes(serialization.msgpack_serialize(jax.tree_util.tree_map(
        lambda x: jax.device_get(x), {"step": np.asarray(7), "params": params, "params_ema": params})))
    rel = os.path.relpath(tmp_path / "converted", ROOT)
    converted = subprocess.run(
        [sys.executable, "-m", "score_sde_jax.convert", "--config", "configs/toy_gmm.py",
         "--checkpoint", os.path.relpath(official, ROOT), "--workdir", rel], cwd=ROOT,
        env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert converted.returncode == 0, converted.stderr[-3000:]
    for cwd, workdir in ((ROOT, rel), (tmp_path, "converted")):
        cmd = main_cmd(workdir, mode="sample", from_root=cwd == ROOT)[:5]  # the plain config
        sampled = subprocess.run([*cmd, "--num_samples=8", "--config.model.num_scales=20"],
                                 cwd=cwd, env=_env(tmp_path), capture_output=True, text=True,
                                 timeout=240)
        assert sampled.returncode == 0, sampled.stderr[-3000:]
        assert "wrote" in sampled.stdout and list((tmp_path / "converted" / "samples").glob("*.npz"))


# ---------------------------------------------------------------------------- the lock's rules
def _write_lock(workdir, host, pid, age_s=0.0):
    path = workdir / preemption.LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "start": time.time() - age_s}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_live_lock_is_refused_and_stale_ones_are_taken_over(tmp_path, caplog):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(tmp_path, socket.gethostname(), sleeper.pid)
        with pytest.raises(preemption.WorkdirLockedError,
                           match=f"pid {sleeper.pid} on host {socket.gethostname()}, started "):
            preemption.WorkdirLock(tmp_path).__enter__()
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level("WARNING"):  # its process is gone: taken over
        with preemption.WorkdirLock(tmp_path, heartbeat_s=0.05) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
            beat = lock.path.stat().st_mtime
            time.sleep(0.3)
            assert lock.path.stat().st_mtime > beat  # the heartbeat
    assert f"process {sleeper.pid} no longer exists" in caplog.text
    assert not (tmp_path / preemption.LOCK_FILE).exists()  # released

    _write_lock(tmp_path, "another-host", 1, age_s=5.0)  # fresh heartbeat elsewhere: live
    with pytest.raises(preemption.WorkdirLockedError, match="pid 1 on host another-host"):
        preemption.WorkdirLock(tmp_path, stale_after_s=60).__enter__()
    _write_lock(tmp_path, "another-host", 1, age_s=120.0)  # heartbeat too old: taken over
    with caplog.at_level("WARNING"), preemption.WorkdirLock(tmp_path, stale_after_s=60):
        pass
    assert "its heartbeat is 120 s old" in caplog.text
