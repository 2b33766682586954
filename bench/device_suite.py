"""The measurements of ``bench/device_suite.sh`` (one accelerator): training, sampling, likelihood.

    python bench/device_suite.py {train8,train,remat,sample,likelihood,norm} --out rows.jsonl
    python bench/device_suite.py table --out rows.jsonl

Each part appends JSON rows to ``--out``; ``table`` prints them as one table. With
``DEVICE_SUITE_SMOKE=1`` every part runs the tiny DDPM++ (``configs/tiny/tiny_ddpmpp.py``) at
toy sizes, which is how the suite is checked on a CPU.

- train: images/s of one update (forward, backward, clipped Adam, EMA) of the full CIFAR-10
  DDPM++ (``configs/vp/cifar10_ddpmpp_continuous.py``) at batch 128 on one device, fp32 and bf16
  (fastest of ``repeats`` timings of ``steps`` chained updates, after two compiling / warm-up
  calls); memory: the compiler's plan (arguments + outputs − donated + temporaries,
  ``memory_analysis``) and the device allocator's peak bytes in use so far in the part's process
  (``memory_stats``: a running maximum, so only a part's first row's is that variant's own).
- remat: the same for bf16 + remat and remat (fp32), in a process of its own.
- train8: the full DDPM++ and NCSN++ (``configs/ve/cifar10_ncsnpp_continuous.py``) train steps
  at batch 8, fp32, with the step's compile time and the first ``create_train_state``'s time
  (its compilation; on the H200 of 2026-12-04 the part spent ~67 s per model outside the
  timed step compilation, not yet split): the rows
  ``bench/vs_official.py`` measures against the official code on a CPU.
- sample: samples/s of PC-1000 (the config's Euler–Maruyama predictor, no corrector, 1000
  steps) and DPM-Solver-20 (2nd-order multistep, 20 NFE) with the same network (float32).
- likelihood: the probability-flow ODE log-likelihood of a batch, this project's jitted diffrax
  solve against the official scipy RK45 host loop (``bench/ode_likelihood.scipy_likelihood``),
  same probes and tolerances (1e-5; the network initialised with ``init_scale`` 1 so that the
  ODE is not trivial).
- norm: GroupNorm alone (32 groups) at batch 128: this project's ``layers.GroupNorm`` against
  ``flax.linen.GroupNorm`` and, where the Python has torch with CUDA, ``torch.nn.GroupNorm``
  (NCHW, in a child process), forward and forward + backward (``bench/group_norm.py``'s calls,
  median over repeats of 20 back-to-back calls).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.dirname(BENCH))

from common import ROOT, load_config, machine, print_table  # noqa: E402
from group_norm import run_torch, time_jax  # noqa: E402
from ode_likelihood import scipy_likelihood  # noqa: E402

from score_sde_jax import likelihood, programs, sampling, sde_lib, sharding, train_lib  # noqa: E402
from score_sde_jax.models import utils as mutils  # noqa: E402

SMOKE = os.environ.get("DEVICE_SUITE_SMOKE", "") == "1"
MACHINE = machine()
CONFIG = "configs/tiny/tiny_ddpmpp.py" if SMOKE else "configs/vp/cifar10_ddpmpp_continuous.py"
NCSNPP_CONFIG = "configs/tiny/tiny_ncsnpp.py" if SMOKE else "configs/ve/cifar10_ncsnpp_continuous.py"
# Sized for a 15-minute lease: one timed run of the long computations after the compiling one.
SIZES = dict(train_batch=8, steps=2, repeats=2, sample_batch=4, pc_steps=10, lik_batch=2, tol=1e-3,
             norm_batch=2, norm_reps=3) \
    if SMOKE else dict(train_batch=128, steps=10, repeats=2, sample_batch=64, pc_steps=1000,
                       lik_batch=8, tol=1e-5, norm_batch=128, norm_reps=15)
VARIANTS = {"train": [("fp32", "float32", False), ("bf16", "bfloat16", False)],
            "remat": [("bf16+remat", "bfloat16", True), ("remat", "float32", True)]}


def config_for(dtype: str = "float32", remat: bool = False):
    config = load_config(os.path.join(ROOT, CONFIG))
    config.model.dtype, config.model.remat = dtype, remat
    return config


def peak_in_use() -> float:
    stats = jax.local_devices()[0].memory_stats() or {}
    return float(stats.get("peak_bytes_in_use", float("nan")))


def emit(out: str, **row) -> None:
    row["machine"] = MACHINE
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def part_train(out: str, variants=VARIANTS["train"]) -> None:
    mesh = sharding.make_mesh(jax.devices()[:1])
    b, steps = SIZES["train_batch"], SIZES["steps"]
    host_state = jax.device_get(train_lib.create_train_state(config_for(), jax.random.PRNGKey(0)))
    shape = mutils.data_shape(config_for())
    images = np.random.default_rng(0).uniform(size=(b, *shape)).astype(np.float32)
    batch = sharding.make_global_batch({"image": images, "label": np.zeros(b, np.int32)}, mesh)
    for name, dtype, remat in variants:
        config = config_for(dtype, remat)
        state = sharding.replicate(host_state, mesh)  # same parameters for every variant
        start = time.perf_counter()
        step = train_lib.compile_train_step(config, mesh).lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        # Two programs (programs.TwoPrograms: CPU meshes, >= 50 M parameters): the larger plan.
        parts = (step.first, step.second) if isinstance(step, programs.TwoPrograms) else (step,)
        planned = max(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                      + m.temp_size_in_bytes for m in (p.memory_analysis() for p in parts))
        for _ in range(2):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        holder = {"state": state}

        def run(holder=holder, step=step):
            s = holder["state"]
            for _ in range(steps):
                s, m = step(s, batch)
            holder["state"] = s
            return m

        seconds = best(run, SIZES["repeats"]) / steps
        emit(out, part="train", what=f"DDPM++ train step, B={b}, {name}", value=b / seconds,
             unit="img/s", ms=seconds * 1e3, planned_gb=planned / 1e9,
             peak_gb=peak_in_use() / 1e9, compile_s=compile_s,
             loss=float(jax.device_get(metrics["loss"])))


def part_train8(out: str) -> None:
    """The full-size DDPM++ and NCSN++ train steps at batch 8, fp32: the rows that
    ``bench/vs_official.py`` compares with the official code on a CPU (s/step and the compile
    time of the step: trace + XLA compile, ``lower().compile()``)."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    b = 8
    for name, path in (("DDPM++", CONFIG), ("NCSN++", NCSNPP_CONFIG)):
        config = load_config(os.path.join(ROOT, path))
        config.training.batch_size = b
        start = time.perf_counter()
        state = jax.block_until_ready(train_lib.create_train_state(config, jax.random.PRNGKey(0)))
        init_s = time.perf_counter() - start
        state = sharding.replicate(state, mesh)
        images = np.random.default_rng(0).uniform(size=(b, *mutils.data_shape(config)))
        batch = sharding.make_global_batch({"image": images.astype(np.float32),
                                             "label": np.zeros(b, np.int32)}, mesh)
        start = time.perf_counter()
        step = train_lib.compile_train_step(config, mesh).lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        for _ in range(2):
            state, metrics = step(state, batch)
        holder = {"state": state}

        def run(holder=holder, step=step, batch=batch):
            s = holder["state"]
            for _ in range(SIZES["steps"]):
                s, m = step(s, batch)
            holder["state"] = s
            return m

        seconds = best(run, SIZES["repeats"]) / SIZES["steps"]
        emit(out, part="train8", what=f"{name} train step, B={b}, fp32 (vs_official row)",
             value=b / seconds, unit="img/s", ms=seconds * 1e3, compile_s=compile_s,
             init_s=init_s, peak_gb=peak_in_use() / 1e9)


def part_sample(out: str) -> None:
    config = config_for()
    sde, eps = sde_lib.get_sde(config)
    model = mutils.get_model(config)
    variables = mutils.init_model(jax.random.PRNGKey(0), config)
    shape = (SIZES["sample_batch"], *mutils.data_shape(config))
    settings = {"DPM-Solver-20": {"method": "dpm_solver", "num_steps": 20, "order": 2,
                                  "adaptive": False},
                f"PC-{SIZES['pc_steps']}": {"method": "pc", "predictor": "euler_maruyama",
                                              "corrector": "none"}}
    for name, over in settings.items():
        cfg = config.copy_and_resolve_references()
        cfg.model.num_scales = SIZES["pc_steps"]
        for key, value in over.items():
            cfg.sampling[key] = value
        sde, eps = sde_lib.get_sde(cfg)
        sampler = sampling.get_sampling_fn(cfg, sde, shape, eps)

        @jax.jit
        def draw(variables, rng, sampler=sampler, sde=sde):
            return sampler(rng, mutils.get_score_fn(sde, model, variables, continuous=True))

        start = time.perf_counter()
        x, nfe = jax.block_until_ready(draw(variables, jax.random.PRNGKey(1)))
        first = time.perf_counter() - start
        seconds = best(lambda draw=draw: draw(variables, jax.random.PRNGKey(2)), 1)
        emit(out, part="sample", what=f"{name} sampling, B={shape[0]}, fp32",
             value=shape[0] / seconds, unit="samples/s", ms=seconds * 1e3,
             nfe=int(np.max(jax.device_get(nfe))), first_call_s=first,
             finite=bool(jnp.all(jnp.isfinite(x))), peak_gb=peak_in_use() / 1e9)


def part_likelihood(out: str) -> None:
    config = config_for()
    config.model.init_scale = 1.0  # a non-trivial ODE from an untrained network
    sde, eps = sde_lib.get_sde(config)
    model = mutils.get_model(config)
    variables = mutils.init_model(jax.random.PRNGKey(0), config)
    b, tol, lik_eps = SIZES["lik_batch"], SIZES["tol"], 1e-5
    x = 2 * jax.random.uniform(jax.random.PRNGKey(3), (b, *mutils.data_shape(config))) - 1

    def score(params, y, t):
        return mutils.get_score_fn(sde, model, params, continuous=True)(y, t)

    rng = jax.random.PRNGKey(0)
    probe = jax.random.rademacher(rng, x.shape).astype(x.dtype)  # what get_likelihood_fn draws
    lik = likelihood.get_likelihood_fn(sde, "rademacher", tol, tol, lik_eps)
    fn = jax.jit(lambda p, r, x: lik(r, lambda y, t: score(p, y, t), x))
    start = time.perf_counter()
    logp, _, nfe = jax.block_until_ready(fn(variables, rng, x))
    first = time.perf_counter() - start
    seconds = best(lambda: fn(variables, rng, x), 1)
    run = scipy_likelihood(sde, score, variables, x, probe, tol, tol, lik_eps)
    start = time.perf_counter()
    ref, ref_nfe = run()
    scipy_first = time.perf_counter() - start
    scipy_seconds = best(lambda: run()[0], 1)
    dim = int(np.prod(x.shape[1:]))
    diff = float(np.max(np.abs(np.asarray(logp, np.float64) - ref)) / dim)
    emit(out, part="likelihood", what=f"ODE likelihood, B={b}, scipy RK45 host loop",
         value=scipy_seconds, unit="s", nfe=int(ref_nfe), first_call_s=scipy_first,
         peak_gb=peak_in_use() / 1e9)
    emit(out, part="likelihood", what=f"ODE likelihood, B={b}, diffrax dopri5 jit+vmap",
         value=seconds, unit="s", nfe=int(np.max(jax.device_get(nfe))), first_call_s=first,
         speedup=scipy_seconds / seconds, max_diff_nats_per_dim=diff, peak_gb=peak_in_use() / 1e9)


def part_norm(out: str) -> None:
    b, reps, calls = SIZES["norm_batch"], SIZES["norm_reps"], 20
    shapes = [(b, 32, 32, 128), (b, 16, 16, 256), (b, 8, 8, 256)]
    measured = time_jax(shapes, reps, calls)
    device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
    try:
        torch_rows = run_torch(sys.executable, shapes, reps, calls, device)
    except (OSError, ValueError, subprocess.CalledProcessError) as e:  # a Python without torch
        detail = getattr(e, "stderr", "") or e
        print(f"[device_suite] norm: no torch column: {str(detail).strip()[-300:]}", flush=True)
        torch_rows = None
    for i, shape in enumerate(shapes):
        for j, what in enumerate(("fwd", "fwd+bwd")):
            mine, flax_s = measured[i]["project", what], measured[i]["flax", what]
            row = dict(part="norm", what=f"GroupNorm {'x'.join(map(str, shape))}, {what}",
                       value=mine * 1e3, unit="ms", flax_ms=flax_s * 1e3,
                       flax_over_project=flax_s / mine)
            if torch_rows is not None:
                row.update(torch_ms=torch_rows[i][j] * 1e3, torch_over_project=torch_rows[i][j] / mine)
            emit(out, **row)


def part_table(out: str) -> None:
    """The rows of ``out`` as one table, without the columns that no row has."""
    with open(out) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    extra = [k for k in ("ms", "nfe", "planned_gb", "peak_gb", "compile_s", "init_s", "first_call_s",
                         "speedup", "max_diff_nats_per_dim", "loss", "flax_ms",
                         "flax_over_project", "torch_ms", "torch_over_project")
             if any(k in r for r in rows)]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    where = rows[0].get("machine", MACHINE) if rows else MACHINE
    print_table(f"Device suite{' (SMOKE: tiny sizes)' if SMOKE else ''} — {where}",
                ["measurement", "value", "unit", *extra],
                [[r["what"], fmt(r["value"]), r["unit"], *[fmt(r[k]) if k in r else "" for k in extra]]
                 for r in rows],
                notes=["planned_gb: the compiled programs' arguments + outputs - donated + "
                       "temporaries, the larger of the gradient's and the update's; "
                       "peak_gb: the device allocator's peak bytes in use so far in "
                       "that part's process; init_s: the first create_train_state (compiles the "
                       "initialization); *_over_project > 1: the project is faster"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["train8", "train", "remat", "sample", "likelihood", "norm",
                                         "table"])
    parser.add_argument("--out", required=True, help="JSON-lines file the rows are appended to")
    args = parser.parse_args()
    if args.part != "table":
        print(f"[device_suite] {args.part} on {machine()}", flush=True)
    {"train": part_train, "remat": lambda out: part_train(out, VARIANTS["remat"]),
     "train8": part_train8, "sample": part_sample, "likelihood": part_likelihood,
     "norm": part_norm, "table": part_table}[args.part](args.out)


if __name__ == "__main__":
    main()
