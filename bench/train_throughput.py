"""Images per second of the data-parallel training step (``train_lib.compile_train_step``).

    python bench/train_throughput.py [--batch 8] [--steps 3] [--only cifar]

One row per config: parameters, the time to initialize (jit-compiled init) and to compile the
step, the median time of one update (forward, backward, clipped Adam, EMA) over ``--steps``
chained calls after the compiling one, images/s, and images/s relative to the tiny config of the
same run (the baseline). Batches are random images of the config's shape on every local device;
the data pipeline is not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from unittest import mock

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, load_config, machine, print_table  # noqa: E402
from score_sde_jax import cli, losses, sharding, train_lib  # noqa: E402
from score_sde_jax.models import utils as mutils  # noqa: E402

CONFIGS = [  # (row name, config file, each example alone); the first row is the baseline
    ("tiny DDPM++ 16x16x1 (baseline)", "configs/tiny/tiny_ddpmpp.py", False),
    ("digits DDPM++ 8x8x1 (embedded default)", "configs/digits.py", False),
    ("digits DDPM++ 8x8x1, each example alone (vmap)", "configs/digits.py", True),
    ("DDPM++ cont. VP, CIFAR-10 32x32x3", "configs/vp_cifar10.py", False),
]


def measure(config_path: str, batch: int, steps: int, alone: bool = False) -> dict:
    """``alone``: the loss as a vmap of batch-of-one calls (the path of tasks other than "score",
    ``losses.summed_per_example``) instead of one batched call."""
    config = load_config(os.path.join(ROOT, config_path))
    config.training.batch_size = batch
    if alone:
        config.training.bench_alone = True  # another compiled step (train_lib.cached_jit)
        with mock.patch.object(losses, "batched_loss", lambda config: False):
            return measure_config(config, batch, steps)
    return measure_config(config, batch, steps)


def measure_config(config, batch: int, steps: int) -> dict:
    mesh = sharding.make_mesh()
    sharding.check_batch_size(batch, mesh)
    start = time.perf_counter()
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    state = sharding.replicate(state, mesh)
    rng = np.random.default_rng(0)
    local = {"image": rng.uniform(size=(batch // jax.process_count(), *mutils.data_shape(config)))
             .astype(np.float32), "label": np.zeros(batch // jax.process_count(), np.int32)}
    data = sharding.make_global_batch(local, mesh)
    step = train_lib.compile_train_step(config, mesh)
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(step(state, data))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(step(state, data))
        times.append(time.perf_counter() - start)
    assert np.isfinite(float(metrics["loss"]))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    step_s = statistics.median(times)
    return {"params": n_params, "shape": mutils.data_shape(config), "init": init_s,
            "compile": compile_s - step_s, "step": step_s, "ips": batch / step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed updates per config")
    parser.add_argument("--only", default="", help="keep configs whose name contains this")
    parser.add_argument("--no-keep-host-memory", action="store_true",
                        help="leave glibc's allocator as it is (main.py --nokeep_host_memory)")
    args = parser.parse_args()
    if not args.no_keep_host_memory:  # as main.py runs (before JAX's backend starts)
        cli.keep_freed_host_memory()
    rows, baseline = [], None
    for name, path, alone in CONFIGS:
        if args.only.lower() not in name.lower() and baseline is not None:
            continue
        r = measure(path, args.batch, args.steps, alone)
        baseline = baseline or r["ips"]
        rows.append([name, f"{r['params'] / 1e6:.2f}M", "x".join(map(str, r["shape"])), args.batch,
                     f"{r['init']:.1f}", f"{r['compile']:.1f}", f"{r['step'] * 1e3:.0f}",
                     f"{r['ips']:.1f}", f"{r['ips'] / baseline:.3f}"])
    print_table(
        f"Training step throughput, {jax.device_count()} device(s) -- {machine()}",
        ["config", "params", "image", "batch", "init s", "compile s", "step ms", "images/s",
         "vs baseline"], rows,
        [f"step ms: median of {args.steps} updates after the compiling call; init s: the "
         "jit-compiled create_train_state; compile s: first call minus one step."])


if __name__ == "__main__":
    main()
