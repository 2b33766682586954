"""Samples/s and bits/dim images/s of the sharded evaluation steps against the number of devices.

    python bench/eval_throughput.py [--config configs/tiny/tiny_ddpmpp.py] [--batch 16]
                                    [--steps 20] [--repeats 3]

One row per mesh of 1, 2, 4, 8 devices (the first n of ``jax.devices()``; on a CPU the script
asks XLA for 8 host devices): the per-device share of the global batch, the median time of one
call of the PC sampler (``eval_lib.get_sample_fn``, ``--steps`` noise scales) and of the
bits/dim step (``get_bpd_fn``, ODE likelihood at rtol = atol = 1e-3), samples/s and images/s,
each relative to 1 device of the same run, and the largest difference of the samples from the
1-device ones (the same per-sample keys: it must be ~0). On CPU host devices, which share the
same cores, the table shows that the work is split (same results, per-device batch shrinking),
not a speed-up; on an accelerator it is the scaling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, load_config, machine, print_table  # noqa: E402
from score_sde_jax import (  # noqa: E402
    eval_lib,
    sde_lib,
    sharding,  # noqa: E402,
    train_lib,
)
from score_sde_jax.models import utils as mutils  # noqa: E402


def median_time(fn, repeats: int) -> tuple[float, object]:
    out = jax.block_until_ready(fn())  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(config, n: int, batch: int, repeats: int) -> dict:
    mesh = sharding.make_mesh(jax.devices()[:n])
    sharding.check_batch_size(batch, mesh, "--batch")
    sde, eps = sde_lib.get_sde(config)
    build = eval_lib.score_fn_builder(config, sde)
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    params = sharding.replicate(state.params_ema, mesh)
    key = jax.random.PRNGKey(1)
    indices = sharding.global_array(np.arange(batch), mesh)
    sample_fn = eval_lib.get_sample_fn(config, sde, build, batch, eps, mesh)
    sample_s, (x, _) = median_time(lambda: sample_fn(params, key, indices), repeats)
    data = np.random.default_rng(0).integers(0, 256, (batch, *mutils.data_shape(config))) / 255.0
    bpd_fn = eval_lib.get_bpd_fn(config, sde, build, mesh)
    images = sharding.global_array(data.astype(np.float32), mesh)
    bpd_s, _ = median_time(lambda: bpd_fn(params, key, indices, images), repeats)
    return {"sample_s": sample_s, "bpd_s": bpd_s, "x": np.asarray(x),
            "devices": len(x.sharding.device_set)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny/tiny_ddpmpp.py")
    parser.add_argument("--batch", type=int, default=16, help="global batch (multiple of 8)")
    parser.add_argument("--steps", type=int, default=20, help="noise scales of the PC sampler")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per step")
    args = parser.parse_args()
    config = load_config(os.path.join(ROOT, args.config))
    config.model.num_scales = args.steps
    config.eval.likelihood_rtol = config.eval.likelihood_atol = 1e-3
    rows, base = [], None
    for n in (1, 2, 4, 8):
        if n > jax.device_count():
            break
        r = measure(config, n, args.batch, args.repeats)
        base = base or r
        rows.append([n, r["devices"], args.batch // n, f"{r['sample_s'] * 1e3:.0f}",
                     f"{args.batch / r['sample_s']:.1f}", f"{base['sample_s'] / r['sample_s']:.2f}",
                     f"{r['bpd_s'] * 1e3:.0f}", f"{args.batch / r['bpd_s']:.1f}",
                     f"{base['bpd_s'] / r['bpd_s']:.2f}", f"{np.max(np.abs(r['x'] - base['x'])):.1e}"])
    print_table(
        f"Sharded evaluation throughput, {args.config}, global batch {args.batch} -- {machine()}",
        ["devices", "output on", "per device", "sample ms", "samples/s", "vs 1", "bpd ms",
         "bpd images/s", "vs 1", "max |dx| vs 1"], rows,
        [f"sample: PC sampler, {args.steps} scales, one call for the global batch; bpd: the "
         "ODE likelihood step at rtol = atol = 1e-3; medians of "
         f"{args.repeats} calls after the compiling one. 'output on': devices holding the "
         "sampler's output shards."])


if __name__ == "__main__":
    main()
