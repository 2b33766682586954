"""First-call compile time of the full-size train steps, against another checkout in the same run.

    python bench/compile_time.py [--baseline PATH] [--repeats 3] [--only ddpmpp]

For each full-size CIFAR-10 config (DDPM++ ``configs/vp/cifar10_ddpmpp_continuous.py``, NCSN++
``configs/ve/cifar10_ncsnpp_continuous.py``, batch 8, one device) a fresh process builds the
state's shapes (``train_lib.abstract_train_state``, nothing initialised, as ``run_lib`` does
before the step) and times what ``main.py``'s first call of the step does before it runs
(``logging_utils.announce_compile``): trace + lower (``compile_train_step(...).lower``) and
XLA's compile (``.compile()``; on CPU the step of a network of ≥ 50 M parameters is two
programs compiled on two threads, ``programs.TwoPrograms``), with the persistent compilation
cache in a new empty folder; a second process then compiles the same step from that folder,
now filled. Python's cyclic garbage collector is paused as ``announce_compile`` pauses it (a
checkout without ``logging_utils.cyclic_gc_paused`` runs with it on, as its ``main.py`` did).

``--baseline PATH``: the same measurements with the package of another checkout (e.g. ``git
worktree add /tmp/base HEAD~3``), interleaved with this one's (baseline, this, baseline, ...),
and the ratio baseline / this of the medians (> 1: this checkout compiles faster). Unpinned, all
cores (XLA compiles on a thread pool), so run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, machine, print_table  # noqa: E402

CONFIGS = {"ddpmpp": "configs/vp/cifar10_ddpmpp_continuous.py",
           "ncsnpp": "configs/ve/cifar10_ncsnpp_continuous.py"}

_MEASURE = """
import contextlib, json, sys, time
import jax, jax.numpy as jnp
from score_sde_jax import cli, logging_utils, sharding, train_lib
cli.setup_compilation_cache(sys.argv[2], min_compile_secs=0.0)
config = cli.load_config(sys.argv[1])
config.training.batch_size = 8
mesh = sharding.make_mesh(jax.devices()[:1])
state = train_lib.abstract_train_state(config)  # as run_lib makes its restore template
size, channels = config.data.image_size, config.data.num_channels
batch = {"image": jax.ShapeDtypeStruct((8, size, size, channels), jnp.float32),
         "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
paused = getattr(logging_utils, "cyclic_gc_paused", contextlib.nullcontext)
start, cpu = time.perf_counter(), time.process_time()
with paused():
    lowered = train_lib.compile_train_step(config, mesh).lower(state, batch)
    traced = time.perf_counter()
    compiled = lowered.compile()
end = time.perf_counter()
print(json.dumps({"trace": traced - start, "compile": end - traced, "total": end - start,
                  "cpu": time.process_time() - cpu,
                  "fusions": compiled.as_text().count(" fusion(")}))
"""


def measure(repo: str, config: str, cache: str) -> dict:
    """One fresh process of ``repo``'s package compiling ``config``'s train step."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
    out = subprocess.run([sys.executable, "-c", _MEASURE, os.path.join(repo, config), cache],
                         cwd=repo, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{repo}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="", help="another checkout to measure alongside")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="the configs whose name contains this")
    args = parser.parse_args()
    codes = ([("baseline", os.path.abspath(args.baseline))] if args.baseline else []) + [("this", ROOT)]
    rows, notes = [], []
    for name, config in CONFIGS.items():
        if args.only not in name:
            continue
        runs = {code: {"cold": [], "warm": []} for code, _ in codes}
        for _ in range(args.repeats):
            for code, repo in codes:
                with tempfile.TemporaryDirectory() as cache:
                    runs[code]["cold"].append(measure(repo, config, cache))
                    runs[code]["warm"].append(measure(repo, config, cache))
        for code, _ in codes:
            cold, warm = runs[code]["cold"], runs[code]["warm"]
            total = [r["total"] for r in cold]
            ratio = ""
            if code == "this" and args.baseline:
                base = statistics.median(r["total"] for r in runs["baseline"]["cold"])
                ratio = f"{base / statistics.median(total):.2f}"
            rows.append([name, code, str(len(cold)), cell([r["trace"] for r in cold]),
                         cell([r["compile"] for r in cold]), cell(total),
                         cell([r["cpu"] for r in cold]), str(cold[0]["fusions"]),
                         cell([r["total"] for r in warm]), ratio])
    if args.baseline:
        notes.append(f"baseline: {args.baseline}")
    print_table(f"First-call compile of the full-size train step, batch 8, one device -- {machine()}",
                ["config", "code", "runs", "trace+lower s", "XLA compile s", "total s", "CPU s",
                 "fusions", "from cache s", "baseline/this"],
                rows, notes + ["seconds: median [min, max] over the runs; total = trace + lower + "
                               "XLA compile with an empty persistent cache; from cache: the same "
                               "in a second process with that cache filled; CPU s: the process's "
                               "CPU time over the total (XLA uses a thread pool)."])


if __name__ == "__main__":
    main()
