"""Forward and forward+backward time of the full-size CIFAR-10 score networks.

    python bench/model_forward.py [--batch 8] [--repeats 3]

Prints one row per network: parameters, XLA's FLOP estimate of the compiled forward and
forward+backward (``jax.jit(f).lower(...).compile().cost_analysis()``), the median wall time of
``--repeats`` runs after a warm-up, and each time relative to the DDPM baseline of the same run.
Forward: ``train=False``; forward+backward: the gradient of mean(output²) w.r.t. the parameters
with dropout on (``train=True``), as in a training step.

A second table times the FIR resampling of NCSN++ (``upfirdn_2d`` as shifted slices, separable
and polyphase) against the same operation as a zero-stuffed depthwise convolution (baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from score_sde_jax.checkpoints import model_template  # noqa: E402
from score_sde_jax.cli import load_config  # noqa: E402
from score_sde_jax.models import get_model  # noqa: E402
from score_sde_jax.models import up_or_down_sampling as ud  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORKS = [  # (row name, config file, labels for the batch)
    ("DDPM (baseline)", "configs/vp/ddpm/cifar10.py", lambda b: jnp.arange(b) * 100),
    ("NCSN++ cont. (VE)", "configs/ve/cifar10_ncsnpp_continuous.py",
     lambda b: jnp.geomspace(0.01, 50.0, b)),
    ("DDPM++ cont. (VP)", "configs/vp/cifar10_ddpmpp_continuous.py",
     lambda b: jnp.linspace(1e-3, 1.0, b) * 999),
]


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def timed(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config_file: str, labels_fn, batch: int, repeats: int) -> dict:
    config = load_config(os.path.join(ROOT, config_file))
    model = get_model(config)
    shapes, _ = model_template(config)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.standard_normal(s, dtype=np.float32)
                              / np.sqrt(np.prod(s[:-1]) or 1)),
        shapes, is_leaf=lambda s: isinstance(s, tuple))
    size = config.data.image_size
    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, size, size, config.data.num_channels))
    labels = labels_fn(batch)
    dropout_rng = jax.random.PRNGKey(1)

    def forward(v, x, labels):
        return model.apply(v, x, labels, train=False)

    def loss(v, x, labels):
        out = model.apply(v, x, labels, train=True, rngs={"dropout": dropout_rng})
        return jnp.mean(out**2)

    fwd = jax.jit(forward).lower(variables, x, labels).compile()
    bwd = jax.jit(jax.grad(loss)).lower(variables, x, labels).compile()
    args = (variables, x, labels)
    return {
        "params": sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(variables)),
        "fwd_flops": flops(fwd),
        "bwd_flops": flops(bwd),
        "fwd_s": timed(fwd, args, repeats),
        "bwd_s": timed(bwd, args, repeats),
    }


def depthwise_upfirdn(x, k, up=1, down=1, pad0=0, pad1=0):
    """Baseline upfirdn_2d: zero-stuff, pad, one depthwise convolution with the flipped kernel."""
    n, h, w, c = x.shape
    u = jnp.zeros((n, h * up, w * up, c), x.dtype).at[:, ::up, ::up, :].set(x)
    u = jnp.pad(u, ((0, 0), (pad0, pad1), (pad0, pad1), (0, 0)))
    kernel = jnp.asarray(np.tile(k[::-1, ::-1, None, None], (1, 1, 1, c)), x.dtype)
    return jax.lax.conv_general_dilated(u, kernel, (down, down), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)


def fir_table(batch: int, repeats: int) -> None:
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 16, 16, 256))
    k = ud.setup_kernel((1, 3, 3, 1))
    ops = {"upsample_2d": dict(k=k * 4, up=2, pad0=2, pad1=1),
           "downsample_2d": dict(k=k, down=2, pad0=1, pad1=1)}
    print(f"\nFIR [1,3,3,1] resampling of ({batch}, 16, 16, 256), median of {repeats * 5} runs")
    header = f"{'op':<15} {'impl':<22} {'fwd ms':>8} {'× base':>7} {'fwd+bwd ms':>11} {'× base':>7}"
    print(header)
    print("-" * len(header))
    for op, kwargs in ops.items():
        base = None
        for impl, fn in (("depthwise conv (base)", depthwise_upfirdn),
                         ("shifted slices", ud.upfirdn_2d)):
            def f(x, fn=fn, kwargs=kwargs):
                return fn(x, **kwargs)

            fwd = timed(jax.jit(f), (x,), repeats * 5) * 1e3
            bwd = timed(jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x) ** 2))), (x,),
                        repeats * 5) * 1e3
            base = base or (fwd, bwd)
            print(f"{op:<15} {impl:<22} {fwd:>8.2f} {fwd / base[0]:>7.3f} {bwd:>11.2f} "
                  f"{bwd / base[1]:>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fir-only", action="store_true", help="only the FIR table")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"batch {args.batch}, 32x32x3, float32, {device.platform} ({device.device_kind}), "
          f"median of {args.repeats} runs")
    if args.fir_only:
        fir_table(args.batch, args.repeats)
        return
    rows = [(name, measure(path, labels, args.batch, args.repeats))
            for name, path, labels in NETWORKS]
    base = rows[0][1]
    header = (f"{'network':<20} {'params':>12} {'fwd GFLOP':>10} {'fwd s':>8} {'× base':>7} "
              f"{'fwd+bwd GFLOP':>14} {'fwd+bwd s':>10} {'× base':>7}")
    print(header)
    print("-" * len(header))
    for name, r in rows:
        print(f"{name:<20} {r['params']:>12,} {r['fwd_flops'] / 1e9:>10.1f} {r['fwd_s']:>8.3f} "
              f"{r['fwd_s'] / base['fwd_s']:>7.2f} {r['bwd_flops'] / 1e9:>14.1f} "
              f"{r['bwd_s']:>10.3f} {r['bwd_s'] / base['bwd_s']:>7.2f}")
    fir_table(args.batch, args.repeats)


if __name__ == "__main__":
    main()
