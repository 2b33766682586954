"""This project against the official score_sde_pytorch code on the same CPU (or GPU), side by side.

    python bench/vs_official.py --official PATH/score_sde_pytorch --torch-python PATH/bin/python \
        [--pairs 7] [--full-pairs 3] [--only ddpmpp] [--calls forward,train_step,pc,ode] \
        [--device cuda]

Fetches nothing: ``--official`` is a checkout of score_sde_pytorch, ``--torch-python`` a Python
with torch, numpy and ml_collections, which runs ``bench/official_worker.py`` (the official
networks and training step, its two CUDA extension loads bypassed: their CPU paths are pure
torch). Each case builds the official network of an official config (torch.manual_seed(0)); the
project imports the same weights (``checkpoints.from_official_pytorch``) and gets the same
inputs (batch ``--batch``, labels in the range the network is trained on).

Rows: forward (eval mode, no gradient) and one training step (loss, backward, clipped Adam with
warmup, EMA; dropout on as in training; the project's ``train_lib.compile_train_step`` on one
device) for the small parity-size networks (``tests/data``: image 16, nf 32, ch_mult (1, 2),
one residual block, attention at 8) and the full CIFAR-10 DDPM++ / NCSN++. Each row is timed in
interleaved pairs (official call, project call, official, project, ...) after one warm-up call
of each (the project's compiles); the ratio is official seconds / project seconds, so > 1 means
the project is faster: median [min, max] over the pairs, of the wall times and of the process
CPU times (on a loaded machine the CPU-time ratio is the steadier one). One core each: torch
with ``set_num_threads(1)``, XLA with ``--xla_cpu_multi_thread_eigen=false``, and both processes
pinned to the same core (``os.sched_setaffinity``; XLA:CPU still runs part of the step on a
thread pool whatever those flags say). The project's process keeps freed host memory as
``main.py`` does (``cli.keep_freed_host_memory``; ``--no-keep-host-memory``: glibc's defaults).
Compile time of the full-size train steps: trace +
``lower().compile()`` with an empty persistent compilation cache (a fresh temporary folder),
then again in a fresh trace with the cache filled.

``--device cuda``: both on the machine's GPU instead (official: its network on CUDA with its two
CUDA extensions built by torch; project: JAX's default GPU device, a share of its memory left to
torch). No pinning and no CPU flags then; timings synchronize the device (torch) or block on
the outputs (JAX); the CPU-time column says little there.

Sampling rows (``bench/vs_official_sampling.py``), in a second table: ``pc``, the
predictor-corrector sampler of the config as each code base builds it
(``sampling.get_sampling_fn`` on both sides: DDPM++ Euler-Maruyama without corrector, NCSN++
reverse diffusion + one Langevin step) on the config's SDE with ``--sample-steps`` steps (small
networks) or ``--full-sample-steps`` (full size) instead of ``num_scales``; ``ode``, the
probability-flow ODE sampler (official: scipy ``solve_ivp`` RK45 with a host round trip per
evaluation; project: diffrax Dopri5 with scipy's step rule) at rtol = atol = ``--ode-tol`` from
the same prior latent, on the small networks only unless ``--full-ode``. Both sample a batch of
``--batch`` with the same weights; the rows compare the time per network evaluation (NFE): the
official calls counted by a wrapper around its network, the project's from its sampler's NFE
output, checked once against the calls made (a host callback in a separately compiled copy;
``--no-nfe-check`` skips it). ``--calls`` picks the rows (e.g. ``--calls pc`` re-runs one).
"""

from __future__ import annotations

import os

# One core: XLA:CPU still runs part of the work on a thread pool with these
# flags (measured: 1.8 CPU-seconds per second on 2 cores), so both processes are also pinned to
# one core, the same one, before jax starts its threads (--no-pin turns that off). On a GPU
# (--device cuda) neither: JAX uses its GPU and leaves torch room on it.
_ARGV = os.sys.argv
GPU = "--device=cuda" in _ARGV or any(a == "--device" and b == "cuda"
                                      for a, b in zip(_ARGV, _ARGV[1:], strict=False))
CORE = max(os.sched_getaffinity(0))
if GPU:
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
else:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the CPU comparison, also on a GPU machine
    if "--no-pin" not in _ARGV:
        os.sched_setaffinity(0, {CORE})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, load_config, machine, print_table  # noqa: E402
from bench.vs_official_sampling import (  # noqa: E402
    HEADER,
    NOTES,
    counted_nfe,
    nfe_pairs,
    prior_latent,
    sampling_calls,
    sampling_row,
)
from score_sde_jax import checkpoints, cli, logging_utils, sharding, train_lib  # noqa: E402
from score_sde_jax.models import utils as mutils  # noqa: E402

CALLS = ("forward", "train_step", "pc", "ode")

SMALL = {"model": {"nf": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8]},
         "data": {"image_size": 16}}
CASES = [  # (name, config file (the same path in both repositories), overrides, full size)
    ("DDPM++ small", "configs/vp/cifar10_ddpmpp_continuous.py", SMALL, False),
    ("NCSN++ small", "configs/ve/cifar10_ncsnpp_continuous.py", SMALL, False),
    ("DDPM++ full", "configs/vp/cifar10_ddpmpp_continuous.py", {}, True),
    ("NCSN++ full", "configs/ve/cifar10_ncsnpp_continuous.py", {}, True),
]


class Official:
    """The worker process running the official code (one JSON line in, one out)."""

    def __init__(self, python: str, checkout: str, core: int | None, device: str = "cpu"):
        worker = os.path.join(ROOT, "bench", "official_worker.py")
        pin = [] if core is None else ["--core", str(core)]
        self.proc = subprocess.Popen([python, worker, "--official", checkout, "--device", device, *pin],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the official worker stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def project_config(path: str, overrides: dict, batch: int):
    config = load_config(os.path.join(ROOT, path))
    for section, values in overrides.items():
        for key, value in values.items():
            config[section][key] = tuple(value) if isinstance(value, list) else value
    config.training.batch_size = batch
    return config


def labels_for(config, batch: int) -> np.ndarray:
    """Noise levels the network sees in training: 999·t (VP) or σ(t) (VE), t spread over (0, 1]."""
    t = np.linspace(1e-3, 1.0, batch)
    if config.training.sde.lower() == "vesde":
        m = config.model
        return (m.sigma_min * (m.sigma_max / m.sigma_min) ** t).astype(np.float32)
    return (999 * t).astype(np.float32)


def project_calls(config, variables: dict, x: np.ndarray, labels: np.ndarray) -> dict[str, Callable]:
    """The project's forward and train step on the official weights (each call blocks)."""
    model = mutils.get_model(config)
    apply = jax.jit(lambda v, x, y: model.apply(v, x, y, train=False))
    xj, yj = jnp.asarray(x), jnp.asarray(labels)
    mesh = sharding.make_mesh(jax.devices()[:1])
    params = variables["params"]
    state = [sharding.replicate(train_lib.train_state_from_params(config, params, params, 0), mesh)]
    batch = sharding.make_global_batch({"image": x, "label": np.zeros(len(x), np.int32)}, mesh)
    step = train_lib.compile_train_step(config, mesh)

    def train_step():
        state[0], metrics = step(state[0], batch)
        return jax.block_until_ready(metrics)

    return {"forward": lambda: jax.block_until_ready(apply(variables, xj, yj)),
            "train_step": train_step}


def seconds(fn: Callable) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def pairs(official: Official, case: str, what: str, mine: Callable, n: int) -> dict:
    """Warm-up call of each, then n interleaved pairs: ratios official / project of the wall
    times and of the process CPU times (less sensitive to other jobs on a loaded machine)."""
    official.ask(cmd="time", case=case, what=what)
    mine()
    ratios, cpu_ratios, times_o, times_p = [], [], [], []
    for _ in range(n):
        answer = official.ask(cmd="time", case=case, what=what)
        wall, cpu = seconds(mine)
        ratios.append(answer["seconds"] / wall)
        cpu_ratios.append(answer["cpu"] / cpu)
        times_o.append(answer["seconds"])
        times_p.append(wall)
    return {"ratios": ratios, "cpu_ratios": cpu_ratios, "official": float(np.median(times_o)),
            "project": float(np.median(times_p))}


def compile_times(config, x: np.ndarray) -> list[tuple[float, float]]:
    """[(wall, CPU) seconds] of tracing + compiling the project's train step
    (``lower(...).compile()``), first with the persistent cache still empty for it, then in a
    fresh trace (in-memory caches cleared) with the cache filled. Run before anything else
    compiles that step."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    state = jax.eval_shape(lambda: train_lib.create_train_state(config, jax.random.PRNGKey(0)))
    batch = {"image": jax.ShapeDtypeStruct(x.shape, jnp.float32),
             "label": jax.ShapeDtypeStruct((len(x),), jnp.int32)}
    out = []
    for _ in range(2):
        train_lib._JITTED.clear()
        jax.clear_caches()
        with logging_utils.cyclic_gc_paused():  # as main.py's first call (announce_compile)
            out.append(seconds(
                lambda: train_lib.compile_train_step(config, mesh).lower(state, batch).compile()))
    return out


def ratio_cell(r: list[float]) -> str:
    return f"{np.median(r):.2f} [{min(r):.2f}, {max(r):.2f}]"


def main() -> None:
    # no abbreviations: --device and --no-pin are also read from sys.argv before JAX starts (top)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--official", required=True, help="path of a score_sde_pytorch checkout")
    parser.add_argument("--torch-python", default=sys.executable, help="a Python with torch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=7, help="pairs per small-network row")
    parser.add_argument("--full-pairs", type=int, default=3, help="pairs per full-size row")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--calls", default=",".join(CALLS),
                        help=f"comma-separated rows to run, of {', '.join(CALLS)}")
    parser.add_argument("--sample-steps", type=int, default=20, help="pc steps, small networks")
    parser.add_argument("--full-sample-steps", type=int, default=4, help="pc steps, full size")
    parser.add_argument("--ode-tol", type=float, default=1e-3, help="ode rtol = atol")
    parser.add_argument("--full-ode", action="store_true",
                        help="run the ode row on the full-size networks too (minutes a call)")
    parser.add_argument("--no-nfe-check", action="store_true",
                        help="do not count the project's network calls once per sampling row")
    parser.add_argument("--no-compile-time", action="store_true")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin both processes to one core (then XLA may use more)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: both on the GPU (official CUDA extensions built by torch)")
    parser.add_argument("--no-keep-host-memory", action="store_true",
                        help="leave glibc's allocator as it is (main.py --nokeep_host_memory)")
    args = parser.parse_args()
    if not args.no_keep_host_memory:  # as main.py runs the project (before JAX's backend starts)
        cli.keep_freed_host_memory()

    if not any(args.only.lower() in name.lower() for name, *_ in CASES):
        parser.error(f"--only {args.only!r} matches none of {[name for name, *_ in CASES]}")
    calls = [c.strip() for c in args.calls.split(",") if c.strip()]
    if not calls or set(calls) - set(CALLS):
        parser.error(f"--calls {args.calls!r}: give a comma-separated subset of {list(CALLS)}")
    cache = tempfile.mkdtemp(prefix="vs_official_cache_")
    cli.setup_compilation_cache(cache, min_compile_secs=0.0)
    pinned = not (args.no_pin or GPU)
    official = Official(args.torch_python, args.official, CORE if pinned else None, args.device)
    rows, sample_rows, notes, sample_notes = [], [], [], []
    tmp = tempfile.mkdtemp(prefix="vs_official_")
    rng = np.random.default_rng(0)
    try:
        for name, path, overrides, full in CASES:
            if args.only.lower() not in name.lower():
                continue
            config = project_config(path, overrides, args.batch)
            shape = mutils.data_shape(config)
            x = rng.uniform(size=(args.batch, *shape)).astype(np.float32)
            labels = labels_for(config, args.batch)
            z = prior_latent(config, (args.batch, *shape))
            steps = args.full_sample_steps if full else args.sample_steps
            case_calls = [c for c in calls if c != "ode" or not full or args.full_ode]
            inputs, weights_file = os.path.join(tmp, f"{name}_in.npz"), os.path.join(tmp, f"{name}_w.npz")
            np.savez(inputs, x=x, labels=labels, z=z)
            info = official.ask(cmd="setup", case=name, config=path, overrides=overrides,
                                inputs=inputs, weights=weights_file,
                                sample_steps=steps if "pc" in case_calls else 0,
                                ode_tol=args.ode_tol if "ode" in case_calls else 0)
            with np.load(weights_file) as w:
                variables = checkpoints.from_official_pytorch({k: w[k] for k in w.files}, config)
            first = time.perf_counter()
            n = args.full_pairs if full else args.pairs
            if full and not args.no_compile_time and "train_step" in case_calls:
                (cold, cold_cpu), (warm, warm_cpu) = compile_times(config, x)
                notes.append(f"{name}: train step trace + compile {cold:.1f} s ({cold_cpu:.1f} s "
                             f"CPU) with an empty persistent cache, {warm:.1f} s ({warm_cpu:.1f} s "
                             "CPU) from the filled cache")
            mine = project_calls(config, variables, x, labels)
            for what in [c for c in case_calls if c in ("forward", "train_step")]:
                start = time.perf_counter()
                r = pairs(official, name, what, mine[what], n)
                rows.append([name, what, f"{info['num_params']:,}", str(n), f"{r['official']:.4g}",
                             f"{r['project']:.4g}", ratio_cell(r["ratios"]), ratio_cell(r["cpu_ratios"])])
                print(f"[vs_official] {name} {what}: {rows[-1][-2]} "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            del mine
            sampler_calls = [c for c in case_calls if c in ("pc", "ode")]
            mine = sampling_calls(config, variables, steps, args.ode_tol, z, sampler_calls)
            for what in sampler_calls:
                start = time.perf_counter()
                check = "-"
                if not args.no_nfe_check:
                    made, output, finite = counted_nfe(config, what, steps, args.ode_tol, z, variables)
                    check = f"{made} / {output}"
                    if not finite:
                        sample_notes.append(f"{name} {what}: the project's samples are not all finite")
                r = nfe_pairs(official, name, what, mine[what], n, seconds)
                setting = str(steps) if what == "pc" else f"{args.ode_tol:g}"
                sample_rows.append(sampling_row(name, what, setting, n, r, check, ratio_cell))
                if not r["finite"]:
                    sample_notes.append(f"{name} {what}: the official samples are not all finite")
                if r["nfe_reported"] != r["nfe_o"]:
                    sample_notes.append(f"{name} {what}: the official sampler reported NFE "
                                 f"{sorted(r['nfe_reported'])}, its network was called "
                                 f"{sorted(r['nfe_o'])} times")
                print(f"[vs_official] {name} {what}: {sample_rows[-1][-2]} per NFE "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
            del mine
            if full and "ode" in calls and not args.full_ode:
                sample_notes.append(f"{name}: ode row skipped (full size: --full-ode runs it)")
            print(f"[vs_official] {name}: {time.perf_counter() - first:.0f} s", file=sys.stderr)
    finally:
        official.close()
    load = os.getloadavg()
    where = f"both pinned to core {CORE}" if pinned else "no pinning"
    on = (f"GPU ({jax.devices()[0].device_kind})" if GPU
          else f"CPU, one thread each ({where})")
    title = (f"Official score_sde_pytorch / this project, {on}, batch {args.batch} -- "
             f"{machine()}, torch {info['torch']}")
    load_note = f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    if rows:
        print_table(title, ["network", "call", "parameters", "pairs", "official s", "project s",
                            "official/project", "same, CPU time"], rows,
                    [load_note, *notes])
    if sample_rows:
        print_table(f"Sampling, per network evaluation -- {title}", HEADER, sample_rows,
                    [load_note, *sample_notes, *NOTES])


if __name__ == "__main__":
    main()
