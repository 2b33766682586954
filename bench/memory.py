"""Memory of the full-size train steps, estimated from the traced residuals and from XLA's
compiled programs (nothing executed), and FLOPs.

    python bench/memory.py [--only cifar10_ddpmpp] [--variants fp32,bf16+remat] [--no-compile]
                           [--json out.json]

For each model and variant the train step (``train_lib.get_train_step``: forward, backward,
clipped Adam, EMA) is lowered on abstract shapes (``jax.ShapeDtypeStruct``; the state comes from
``train_lib.abstract_train_state``, a ``jax.eval_shape`` of the initializer, so no big model is
ever initialized) and compiled for one device with the state donated, as ``compile_train_step``
does. Reported:
  peak      arguments + outputs − aliased (donated) bytes + temporaries, from
            ``compiled.memory_analysis()`` at the model's per-device batch B.
  GFLOP/img ``compiled.cost_analysis()['flops']`` / B (one update, backward included).
  max batch the largest per-device batch whose peak fits in 16 / 24 / 40 / 80 GB (GB = 10^9
            bytes), extrapolated linearly from the peaks at B and B/2 (B and 2B when B/2
            is below the accumulation steps): peak(b) = fixed + b · per-image. With
            accumulation the batch is the whole update's (k microbatches of b / k).
The compiled program is XLA:CPU's; a GPU / TPU compiler schedules differently (fusion, and its
own buffer reuse), so the numbers are an estimate of device memory, compared across variants in
one run. bfloat16 convolutions are lowered by XLA:CPU as float32 with conversions around them.
XLA:CPU's buffer plan does not realise rematerialization (BENCHMARKS.md §8), so the compiled
peak does not show remat's saving; the backend-independent columns below do.

Estimated device peak (traced only, seconds a row; ``--no-compile`` prints only these):
  saved     ``memory_estimate.saved_residual_bytes``: what the forward pass keeps for the backward
            pass (the vjp residuals of the loss w.r.t. the parameters) at the microbatch B / k.
  recompute with remat, the largest residuals of one rematerialized block, rebuilt and held
            while that block's backward pass runs.
  state     every leaf of the train state: params, EMA, Adam's two moments (all float32).
  grads     one float32 gradient tree (two with accumulation: the running sum and the
            microbatch's).
  batch     the per-device input batch of B images (float32) and labels.
  est. peak state + grads + batch + saved + recompute; max batch from it, linear in the batch (saved from
            the microbatches B / k and B / 2k, or 2B / k), a multiple of k.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, load_config, machine, print_table  # noqa: E402
from score_sde_jax import memory_estimate, train_lib  # noqa: E402
from score_sde_jax.models import utils as mutils  # noqa: E402

# (row name, config file, per-device batch): CIFAR-10 at the batch of the official runs (128);
# 256² (official global batch 64) and 1024² (official 8) split over 8 TPU cores.
MODELS = [
    ("cifar10_ddpmpp", "configs/vp/cifar10_ddpmpp_continuous.py", 128),
    ("cifar10_ddpmpp_deep", "configs/vp/cifar10_ddpmpp_deep_continuous.py", 128),
    ("cifar10_ncsnpp", "configs/ve/cifar10_ncsnpp_continuous.py", 128),
    ("cifar10_ncsnpp_deep", "configs/ve/cifar10_ncsnpp_deep_continuous.py", 128),
    ("celebahq256_ncsnpp", "configs/ve/celebahq_256_ncsnpp_continuous.py", 8),
    ("ffhq1024_ncsnpp", "configs/ve/ffhq_ncsnpp_continuous.py", 1),
]
VARIANTS = {  # name: (model.dtype, model.remat, training.grad_accum_steps)
    "fp32": ("float32", False, 1),
    "bf16": ("bfloat16", False, 1),
    "remat": ("float32", True, 1),
    "bf16+remat": ("bfloat16", True, 1),
    "fp32 accum4": ("float32", False, 4),
    "bf16+remat accum4": ("bfloat16", True, 4),
}
MEMORIES_GB = (16, 24, 40, 80)
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def variant_config(path: str, variant: str):
    config = load_config(os.path.join(ROOT, path))
    dtype, remat, accum = VARIANTS[variant]
    config.model.dtype, config.model.remat, config.training.grad_accum_steps = dtype, remat, accum
    return config


def analyse(config, batch: int) -> dict:
    """Peak bytes and FLOPs of the compiled one-device train step at ``batch`` (see the module
    docstring); also the compile time."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    state = train_lib.abstract_train_state(config, device)
    shape = mutils.data_shape(config)
    batch_spec = {"image": jax.ShapeDtypeStruct((batch, *shape), jnp.float32, sharding=device),
                  "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=device)}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=device)
    start = time.perf_counter()
    lowered = jax.jit(train_lib.get_train_step(config), donate_argnums=0).lower(state, batch_spec, rng)
    # Buffer assignment (hence the memory numbers) happens on the optimized HLO, before code
    # generation: skipping LLVM's optimizations makes the compile minutes faster on CPU.
    compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
    return {"batch": batch, "peak": int(peak), "arguments": int(mem.argument_size_in_bytes),
            "temp": int(mem.temp_size_in_bytes), "flops": float(cost.get("flops", float("nan"))),
            "compile_s": seconds}


def nbytes(tree) -> int:
    return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(tree)))


def estimate(config, batch: int) -> dict:
    """Estimated device peak at per-device ``batch`` (module docstring), from tracing alone;
    ``fixed`` and ``per_image`` give the line peak(b) = fixed + b · per_image."""
    k = config.training.grad_accum_steps
    state = train_lib.abstract_train_state(config)
    grads = nbytes(state.params) * (1 if k == 1 else 2)
    image = math.prod(mutils.data_shape(config)) * 4 + 4
    start = time.perf_counter()
    at_b = memory_estimate.saved_residual_bytes(config, batch)
    other = batch // 2 if (batch // 2) % k == 0 and batch // 2 >= k else 2 * batch
    at_other = memory_estimate.saved_residual_bytes(config, other)
    held = {n: sum(r.values()) for n, r in ((batch, at_b), (other, at_other))}
    per_image = (held[batch] - held[other]) / (batch - other) + image
    fixed = nbytes(state) + grads + batch * image + held[batch] - batch * per_image
    return {"batch": batch, **at_b, "state": nbytes(state), "grads": grads,
            "inputs": batch * image, "peak": fixed + batch * per_image, "fixed": fixed,
            "per_image": per_image, "trace_s": time.perf_counter() - start}


def fit(fixed: float, per_image: float, memory_bytes: float, multiple: int) -> int:
    """Largest batch (a multiple of ``multiple``) with fixed + batch · per_image under
    ``memory_bytes``; -1 when the line does not grow with the batch."""
    if per_image <= 0:
        return -1
    b = int((memory_bytes - fixed) // per_image)
    return max(b - b % multiple, 0)


def max_batch(at_b: dict, at_other: dict, memory_bytes: float, multiple: int) -> int:
    """Largest batch (a multiple of ``multiple``) under ``memory_bytes`` on the line through the
    two measured peaks."""
    per_image = (at_b["peak"] - at_other["peak"]) / (at_b["batch"] - at_other["batch"])
    return fit(at_b["peak"] - per_image * at_b["batch"], per_image, memory_bytes, multiple)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def print_estimates(rows: list[dict]) -> None:
    """The estimate table (one row per model and variant)."""
    print_table(
        f"Train-step memory, estimated from the traced residuals (not compiled) — {machine()}",
        ["model", "variant", "B", "saved GB", "recompute GB", "state GB", "grads GB", "batch GB",
         "est. peak GB", "vs first", *[f"max B {m}GB" for m in MEMORIES_GB], "trace s"],
        [[r["model"], r["variant"], r["batch"], f"{r['saved_gb']:.2f}",
          f"{r['recompute_gb']:.2f}", f"{r['state_gb']:.2f}",
          f"{r['grads_gb']:.2f}", f"{r['inputs_gb']:.3f}", f"{r['est_peak_gb']:.2f}",
          f"{r['est_vs_fp32']:.2f}", *r["est_max_batch"], f"{r['trace_s']:.0f}"] for r in rows],
        notes=["saved: vjp residuals of the loss w.r.t. the parameters at the microbatch B/k "
               "(inputs themselves not counted); recompute: the largest remat block's own "
               "residuals, rebuilt in the backward pass",
               "state: params + EMA + Adam moments; grads: one tree (two with accumulation)",
               "est. peak = state + grads + batch + saved + recompute; 'vs first' against the "
               "model's first variant; max B: linear in B (saved at two batches), a multiple of k"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated model rows (default: all)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--batch", type=int, default=0, help="override every per-device batch")
    parser.add_argument("--points", type=int, choices=(1, 2), default=2,
                        help="batches compiled per row: 2 (B and B/2) or 1 (B only: max batch "
                             "from peak = (state + batch) + B * temporaries / B, conservative)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the XLA:CPU compile: only the traced estimate (seconds a row)")
    parser.add_argument("--json", default="", help="append one JSON line per row to this file")
    parser.add_argument("--table-from", default="",
                        help="only print the estimate table of the rows in this --json file")
    args = parser.parse_args()
    if args.table_from:
        with open(args.table_from) as f:
            print_estimates([json.loads(line) for line in f if line.strip()])
        return
    only = [s for s in args.only.split(",") if s]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")

    rows, base, est_base = [], {}, {}
    for name, path, batch in MODELS:
        if only and name not in only:
            continue
        batch = args.batch or batch
        for variant in variants:
            config = variant_config(path, variant)
            accum = config.training.grad_accum_steps
            if batch % accum:
                print(f"{name} {variant}: skipped, batch {batch} not divisible by {accum}",
                      file=sys.stderr)
                continue
            est = estimate(config, batch)
            est_base.setdefault(name, est["peak"])
            row = {"model": name, "variant": variant, "batch": batch,
                   "saved_gb": est["saved"] / 1e9, "recompute_gb": est["recompute"] / 1e9,
                   "state_gb": est["state"] / 1e9,
                   "grads_gb": est["grads"] / 1e9, "inputs_gb": est["inputs"] / 1e9,
                   "est_peak_gb": est["peak"] / 1e9, "est_vs_fp32": est["peak"] / est_base[name],
                   "est_max_batch": [fit(est["fixed"], est["per_image"], m * 1e9, accum)
                                     for m in MEMORIES_GB], "trace_s": est["trace_s"]}
            if args.no_compile:
                print(json.dumps(row), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
                rows.append(row)
                continue
            at_b = analyse(config, batch)
            if args.points == 2:
                at_other = analyse(config, batch // 2 if batch // 2 >= accum else 2 * batch)
            else:  # batch-independent part taken as the state's (outputs alias the donated state)
                at_other = {"batch": 0, "peak": at_b["peak"] - at_b["temp"], "compile_s": 0.0}
            fits = [max_batch(at_b, at_other, m * 1e9, accum) for m in MEMORIES_GB]
            base.setdefault(name, at_b["peak"])
            row |= {"peak_gb": at_b["peak"] / 1e9,
                   "vs_fp32": at_b["peak"] / base[name],
                   "args_gb": at_b["arguments"] / 1e9, "temp_gb": at_b["temp"] / 1e9,
                   "gflop_per_image": at_b["flops"] / batch / 1e9, "max_batch": fits,
                   "compile_s": at_b["compile_s"] + at_other["compile_s"]}
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            rows.append(row)

    print()
    print_estimates(rows)
    if args.no_compile:
        return
    print()
    print_table(
        f"Train-step memory (XLA:CPU compiled, not run) — {machine()}",
        ["model", "variant", "B", "peak GB", "vs first", "state+batch GB", "temp GB",
         "GFLOP/img", *[f"max B {m}GB" for m in MEMORIES_GB], "compile s"],
        [[r["model"], r["variant"], r["batch"], f"{r['peak_gb']:.2f}", f"{r['vs_fp32']:.2f}",
          f"{r['args_gb']:.2f}", f"{r['temp_gb']:.2f}", f"{r['gflop_per_image']:.1f}",
          *r["max_batch"], f"{r['compile_s']:.0f}"] for r in rows],
        notes=["peak = arguments + outputs - donated + temporaries; 'vs first' against the "
               "first variant of the model (fp32 by default)",
               "max B: linear through the peaks at B and " + (
                   "B/2 (or 2B)" if args.points == 2 else
                   "B = 0 taken as arguments + outputs - donated (every temporary counted as "
                   "per-image: a lower bound)") + ", rounded down "
               "to a multiple of the accumulation steps; -1: peak does not grow with the batch"])


if __name__ == "__main__":
    main()
