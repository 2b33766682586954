"""Multi-host data parallelism for real: two processes on 127.0.0.1 (jax.distributed with gloo
CPU collectives, 2 devices each), each feeding its own half of every global batch, end with the
parameters of one process that sees the whole batch (a large network's step too: its
gradient and update programs, n updates as n calls); the full training loop (orbax checkpoints
written and resumed collectively) runs across the two processes too, and a SIGTERM to one of
them stops both at the same step with one checkpoint, from which the resumed run ends exactly
where an uninterrupted one does.

Run as a script, this file is one of the two worker processes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from training_helpers import ROOT, max_abs_diff, subprocess_env, tiny_toy_config

from score_sde_jax import checkpoints, preemption, programs, sharding, train_lib

N_STEPS, GLOBAL_BATCH = 3, 64
# numpy-sampled toy data; dropout on, so that the per-example keys must line up across hosts
STEP_CONFIG = {"model.dropout": 0.3, "optim.warmup": 1, "data.dataset": "CHECKERBOARD"}
# the stop run: processes agree at every log step (2, 4, ...); data segments of 4 steps
STOP_CONFIG = {**STEP_CONFIG, "training.n_iters": 12, "training.log_freq": 2,
               "training.snapshot_freq": 12, "training.snapshot_freq_for_preemption": 4}


def global_batches():
    """The same global batches in every process (64 rows each)."""
    rng = np.random.default_rng(0)
    return [{"image": rng.normal(size=(GLOBAL_BATCH, 2)).astype(np.float32),
             "label": rng.integers(0, 3, GLOBAL_BATCH).astype(np.int32)} for _ in range(N_STEPS)]


def train_steps(part: slice | None = None):
    """N_STEPS updates over all devices of all processes; this process feeds rows ``part``."""
    config = tiny_toy_config(**STEP_CONFIG)
    mesh = sharding.make_mesh()
    state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)
    step = train_lib.compile_train_step(config, mesh)
    for batch in global_batches():
        local = {k: v[part] if part else v for k, v in batch.items()}
        state, _ = step(state, sharding.make_global_batch(local, mesh))
    return jax.device_get(state)


def train_steps_in_pieces(part: slice | None = None):
    """The same N_STEPS updates as one call of N_STEPS updates of a large network's step
    (``LARGE_NETWORK`` lowered to 0): N_STEPS calls of the gradient and update programs
    (programs.Repeated of programs.TwoPrograms), compiled ahead of time as main.py does."""
    config = tiny_toy_config(**STEP_CONFIG, **{"training.pieces": True})  # another cached step
    mesh = sharding.make_mesh()
    state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)
    local = {k: np.stack([b[k][part] if part else b[k] for b in global_batches()])
             for k in ("image", "label")}
    batches = sharding.make_global_batch(local, mesh, stacked=True)
    large, train_lib.LARGE_NETWORK = train_lib.LARGE_NETWORK, 0
    try:
        step = train_lib.compile_train_step(config, mesh, N_STEPS)
    finally:
        train_lib.LARGE_NETWORK = large
    assert isinstance(step.step, programs.TwoPrograms)
    state, metrics = step.lower(state, batches).compile()(state, batches)
    assert np.asarray(jax.device_get(metrics["loss"])).shape == (N_STEPS,)
    return jax.device_get(state)


def worker(process_id: int, port: int, workdir: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    half = GLOBAL_BATCH // 2
    state = train_steps(slice(process_id * half, (process_id + 1) * half))
    if process_id == 0:
        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        np.savez(f"{workdir}/params.npz", **{jax.tree_util.keystr(k): v for k, v in leaves})
    pieces = train_steps_in_pieces(slice(process_id * half, (process_id + 1) * half))
    if process_id == 0:
        leaves = jax.tree_util.tree_leaves_with_path(pieces.params)
        np.savez(f"{workdir}/pieces.npz", **{jax.tree_util.keystr(k): v for k, v in leaves})

    from score_sde_jax import logging_utils, run_lib

    logging_utils.setup_logging()
    run_lib.train(tiny_toy_config(**STEP_CONFIG, **{"training.n_iters": 5}), f"{workdir}/run")
    run_lib.train(tiny_toy_config(**STEP_CONFIG, **{"training.n_iters": 10}),  # resumes at 5
                  f"{workdir}/run")

    # process 1 pauses after the checkpoint of step 4, and the test sends it (only) SIGTERM
    config = tiny_toy_config(**STOP_CONFIG)
    if process_id == 1:
        os.environ[checkpoints.PAUSE_ENV] = "after:4:4"
    try:
        run_lib.train(config, f"{workdir}/stopped")
        stopped = {}
    except preemption.TrainingStopped as e:
        stopped = {"step": e.step, "path": str(e.path), "exit_code": e.exit_code}
    os.environ.pop(checkpoints.PAUSE_ENV, None)
    with open(f"{workdir}/stopped_{process_id}.json", "w") as f:
        json.dump(stopped, f)
    run_lib.train(config, f"{workdir}/stopped")  # resumed (in the same processes, to save time)
    run_lib.train(config, f"{workdir}/uninterrupted")
    jax.distributed.shutdown()
    sys.exit(stopped.get("exit_code", 0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    port = _free_port()
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(tmp_path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    meta = tmp_path / "stopped" / "checkpoints-meta"
    start = time.monotonic()
    while checkpoints.all_steps(meta) != [4]:  # process 1 now pauses 4 s
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs]
        assert time.monotonic() - start < 240, "timed out"
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    single = train_steps()  # meanwhile: one process (8 devices here) on the whole batches
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[1])
        finally:
            p.kill()
    for p, err in zip(procs, outputs, strict=True):
        assert p.returncode == 143, err[-4000:]  # both stopped for SIGTERM

    leaves = jax.tree_util.tree_leaves_with_path(single.params)
    for name in ("params", "pieces"):  # one program a step; two programs, three calls a call
        saved = np.load(tmp_path / f"{name}.npz")
        assert sorted(saved.files) == sorted(jax.tree_util.keystr(k) for k, _ in leaves)
        assert max(float(np.max(np.abs(saved[jax.tree_util.keystr(k)] - v))) for k, v in leaves) <= 1e-5
    assert max_abs_diff(single.params, train_lib.create_train_state(
        tiny_toy_config(**STEP_CONFIG), jax.random.PRNGKey(0)).params) > 1e-3

    # the full loop: both processes logged from one place and checkpointed together
    assert "on 4 device(s), 2 process(es)" in outputs[0] and "INFO" not in outputs[1]
    assert f"resuming from {tmp_path / 'run' / 'checkpoints-meta' / '5'} at step 5" in outputs[0]
    assert checkpoints.all_steps(tmp_path / "run" / "checkpoints") == [5, 10]  # each final step
    restored = checkpoints.restore(tmp_path / "run" / "checkpoints",
                                   train_lib.abstract_train_state(tiny_toy_config(**STEP_CONFIG)))
    assert int(restored.step) == 10
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(restored))

    # SIGTERM to process 1 only: both stopped after update 6 with checkpoints-meta/6
    for i in range(2):
        assert json.loads((tmp_path / f"stopped_{i}.json").read_text()) == {
            "step": 6, "path": str(meta / "6"), "exit_code": 143}
    assert "received SIGTERM" in outputs[1] and "received SIGTERM" not in outputs[0]
    template = train_lib.abstract_train_state(tiny_toy_config(**STOP_CONFIG))
    got, want = (checkpoints.restore(tmp_path / run / "checkpoints", template, 12)
                 for run in ("stopped", "uninterrupted"))
    assert checkpoints.all_steps(tmp_path / "stopped" / "checkpoints") == [12]
    assert max_abs_diff(got, want) == 0.0  # params, EMA, Adam moments, rng


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
