"""Several updates per call (``config.training.n_jitted_steps``) on this machine: the update's
time in single calls against ``n`` updates a call as an ``n``-update ``lax.scan``, rolled and
unrolled (``train_lib.compile_train_step(..., unroll=False / True)``), and as n calls of the
one-update step in a host loop (``train_lib.repeated_train_step``; on CPU the default for a
network of ≥ ``train_lib.LARGE_NETWORK`` parameters, the unrolled scan for smaller ones).

    python bench/jitted_steps.py [--config configs/digits.py] [--n 5] [--calls 3]
                                 [--rows single,rolled,unrolled,loop] [--batch B]

One device, the config's batch of random images, the state carried from call to call. Per row:
the compile time, the median time of one update over ``--calls`` calls after the compiling one,
and that time relative to the single-update calls of the same run (the baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, load_config, machine, print_table  # noqa: E402
from score_sde_jax import sharding, train_lib  # noqa: E402
from score_sde_jax.models import utils as mutils  # noqa: E402


def measure(config, n: int, unroll: bool | str | None, calls: int) -> tuple[float, float]:
    """(compile seconds, median seconds per update); ``unroll="loop"``: n calls of the
    one-update step (``train_lib.repeated_train_step``)."""
    jax.clear_caches()  # a row's programs compile anew even if an earlier row compiled them
    mesh = sharding.make_mesh(jax.devices()[:1])
    state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)
    shape = (config.training.batch_size, *mutils.data_shape(config))
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(n, *shape) if n > 1 else shape).astype(np.float32)
    batch = sharding.make_global_batch({"image": image}, mesh, stacked=n > 1)
    start = time.perf_counter()
    step = (train_lib.repeated_train_step(config, mesh, n) if unroll == "loop"
            else train_lib.compile_train_step(config, mesh, n, unroll))
    step = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, _ = step(state, batch)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / n)
    return compile_s, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--n", type=int, default=5, help="updates per call of the scanned rows")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per row")
    parser.add_argument("--rows", default="single,rolled,unrolled,loop",
                        help="which rows (the first one measured is the baseline)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: the config's)")
    args = parser.parse_args()
    config = load_config(os.path.join(ROOT, args.config))
    config.training.batch_size = args.batch or config.training.batch_size
    rows, base = [], None
    for key, name, n, unroll in (("single", "1 update a call", 1, None),
                                 ("rolled", f"{args.n} a call, rolled scan", args.n, False),
                                 ("unrolled", f"{args.n} a call, unrolled scan", args.n, True),
                                 ("loop", f"{args.n} a call, host loop of 1", args.n, "loop")):
        if key not in args.rows.split(","):
            continue
        compile_s, per_update = measure(config, n, unroll, args.calls)
        base = base or per_update
        rows.append([name, f"{compile_s:.1f}", f"{per_update * 1e3:.1f}", f"{per_update / base:.2f}"])
    print_table(f"Updates per call, {args.config}, batch {config.training.batch_size}, one device "
                f"-- {machine()}", ["call", "compile s", "ms / update", "time / baseline"], rows)


if __name__ == "__main__":
    main()
