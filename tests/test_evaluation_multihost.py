"""Evaluation and sampling across two processes (2 devices each, on 127.0.0.1, the harness of
tests/test_run_lib_multihost.py) give the samples, bits/dim, loss and report of one process.

Run as a script, this file is one of the two worker processes, or (``single``) the one-device
reference.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_run_lib_multihost import _free_port
from training_helpers import ROOT, subprocess_env, tiny_toy_config

from score_sde_jax import checkpoints, evaluation, inference, sharding, train_lib
from score_sde_jax import files as io

SEEDS = [3, 21]


def eval_config():
    """Loss, bits/dim and 24 samples (two rounds of 16) of a tiny GMM model."""
    config = tiny_toy_config(**{"data.dataset": "GMM", "data.toy_eval_size": 40})
    config.model.num_scales = 20
    ev = config.eval
    ev.batch_size, ev.num_samples, ev.bpd_num_repeats = 16, 24, 1
    ev.enable_loss = ev.enable_bpd = ev.enable_sampling = True
    ev.begin_ckpt = ev.end_ckpt = 1
    return config


def worker(process_id: int, port: int, workdir: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    evaluation.evaluate(eval_config(), workdir, "eval_two_processes")
    inference.sample(eval_config(), workdir, None, f"{workdir}/seeds", seeds=SEEDS)
    jax.distributed.shutdown()


def test_two_processes_evaluate_like_one(tmp_path):
    config = eval_config()
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    ckpt = checkpoints.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(state.replace(step=jnp.asarray(config.training.snapshot_freq, jnp.int32)), config)
    ckpt.close()
    port = _free_port()
    # all three processes at XLA's default compile level: at the suite's level 1 the one- and
    # two-device programs round differently (2 of the 40 adaptive-ODE bits/dim 1e-3 apart)
    env = subprocess_env(test_compile_level=False,
                         XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, __file__, *args, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in (("0", str(port)), ("1", str(port)), ("single", "0"))]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=300))
        finally:
            p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]

    two, one = tmp_path / "eval_two_processes", tmp_path / "eval_one_device"
    assert "sliced_wasserstein" in outputs[0][0] and "ckpt" in outputs[0][0]  # the summary table
    assert "sliced_wasserstein" not in outputs[1][0]  # printed by process 0 only
    for name in ("ckpt_1_loss.npz", "test_ckpt_1_bpd.npz", "report_1.npz"):
        a, b = io.read_npz(two / name), io.read_npz(one / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=f"{name}:{key}")
    for r in range(2):  # process 0 merged both processes' rows; each wrote only its own
        np.testing.assert_allclose(io.read_npz(two / "ckpt_1" / f"round_{r}.npz")["samples"],
                                   io.read_npz(one / "ckpt_1" / f"round_{r}.npz")["samples"],
                                   rtol=1e-5, atol=1e-5)
        rows = [io.read_npz(two / f"ckpt_1_host_{h}" / f"samples_{r}.npz")["indices"] for h in (0, 1)]
        assert sorted(np.concatenate(rows).tolist()) == list(range(16 * r, 16 * r + 16))
        assert len(rows[0]) == len(rows[1]) == 8
    regenerated = io.read_npz(next((tmp_path / "seeds").glob("*.npz")))
    merged = np.concatenate([io.read_npz(one / "ckpt_1" / f"round_{r}.npz")["samples"] for r in (0, 1)])
    # the untrained model's samples are O(100): float summation order shows at 1e-5 relative
    np.testing.assert_allclose(regenerated["samples"], merged[SEEDS], rtol=1e-5, atol=1e-5)
    assert float(outputs[2][0].strip().splitlines()[-1]) == pytest.approx(
        float(io.read_npz(two / "test_ckpt_1_bpd.npz")["mean_bpd"]), rel=1e-5)


def one_device(workdir: str) -> None:
    """The reference: evaluation on one device of one process; prints its mean bits/dim."""
    single = evaluation.evaluate(eval_config(), workdir, "eval_one_device",
                                 mesh=sharding.make_mesh(jax.devices()[:1]))
    print(single[1]["bpd"])


if __name__ == "__main__":
    if sys.argv[1] == "single":
        one_device(sys.argv[3])
    else:
        worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
