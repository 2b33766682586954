"""The one-update train step as one program or as two (``programs.TwoPrograms``): compile time
and time per update, by network size.

    python bench/two_programs.py [--pairs 5] [--only digits]

For each config (batch 8, one device, as ``main.py`` runs: freed host memory kept) both forms of
``train_lib.compile_train_step(config, mesh)`` are built by moving ``LARGE_NETWORK`` below or
above the network's size. Compile: ``lower(...).compile()`` of each form in its own fresh
process (persistent cache off, cyclic GC paused as ``announce_compile`` does; the two programs
compile on two threads). Run time: both forms in one process from the same initial state, timed
in interleaved pairs (one, two, one, two, ...) after a warm-up update each; a pair times
chained updates of each (20, 2, 1 for the rows below). Ratios one / two (> 1: two programs are
faster)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, machine, print_table  # noqa: E402

CONFIGS = [  # (row name, config file, model.nf or None, chained updates per timing)
    ("digits DDPM++ 8x8x1", "configs/digits.py", None, 20),
    ("DDPM++ cont. VP 32x32x3, nf 64", "configs/vp/cifar10_ddpmpp_continuous.py", 64, 2),
    ("DDPM++ cont. VP 32x32x3 (full)", "configs/vp/cifar10_ddpmpp_continuous.py", None, 1),
]

_SETUP = """
import contextlib, json, sys, time
from unittest import mock
from score_sde_jax import cli
cli.keep_freed_host_memory()
import jax, numpy as np
from score_sde_jax import logging_utils, programs, sharding, train_lib
from score_sde_jax.models import utils as mutils
config = cli.load_config(sys.argv[1])
config.training.batch_size = 8
if sys.argv[2] != "None":
    config.model.nf = int(sys.argv[2])
mesh = sharding.make_mesh(jax.devices()[:1])

def build(two):
    train_lib._JITTED.clear()
    with mock.patch.object(train_lib, "LARGE_NETWORK", 0 if two else float("inf")):
        step = train_lib.compile_train_step(config, mesh)
    assert isinstance(step, programs.TwoPrograms) == two
    return step
"""

_COMPILE = _SETUP + """
jax.config.update("jax_enable_compilation_cache", False)
state = train_lib.abstract_train_state(config)
batch = {"image": jax.ShapeDtypeStruct((8, *mutils.data_shape(config)), np.float32),
         "label": jax.ShapeDtypeStruct((8,), np.int32)}
step = build(sys.argv[3] == "two")
start = time.perf_counter()
with logging_utils.cyclic_gc_paused():
    step.lower(state, batch).compile()
print(json.dumps({"compile": time.perf_counter() - start}))
"""

_RUN = _SETUP + """
jax.config.update("jax_enable_compilation_cache", False)
pairs, calls = int(sys.argv[3]), int(sys.argv[4])
host = jax.device_get(train_lib.create_train_state(config, jax.random.PRNGKey(0)))
images = np.random.default_rng(0).uniform(size=(8, *mutils.data_shape(config))).astype(np.float32)
batch = sharding.make_global_batch({"image": images, "label": np.zeros(8, np.int32)}, mesh)
steps = {"one": build(False), "two": build(True)}
states = {k: sharding.replicate(host, mesh) for k in steps}
for k, step in steps.items():
    states[k], metrics = jax.block_until_ready(step(states[k], batch))
times = {k: [] for k in steps}
for _ in range(pairs):
    for k, step in steps.items():
        start = time.perf_counter()
        for _ in range(calls):
            states[k], metrics = step(states[k], batch)
        jax.block_until_ready((states[k], metrics))
        times[k].append((time.perf_counter() - start) / calls)
params = sum(x.size for x in jax.tree_util.tree_leaves(host.params))
print(json.dumps({"times": times, "params": int(params)}))
"""


def child(script: str, *argv) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", script, *map(str, argv)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", default="", help="keep configs whose name contains this")
    args = parser.parse_args()
    rows = []
    for name, path, nf, calls in CONFIGS:
        if args.only.lower() not in name.lower():
            continue
        config = os.path.join(ROOT, path)
        compiled = {form: child(_COMPILE, config, nf, form)["compile"] for form in ("one", "two")}
        run = child(_RUN, config, nf, args.pairs, calls)
        one, two = run["times"]["one"], run["times"]["two"]
        rows.append([name, f"{run['params'] / 1e6:.2f}M", f"{compiled['one']:.1f}",
                     f"{compiled['two']:.1f}", f"{compiled['one'] / compiled['two']:.2f}",
                     f"{statistics.median(one) * 1e3:.1f}", f"{statistics.median(two) * 1e3:.1f}",
                     cell([a / b for a, b in zip(one, two, strict=True)])])
    load = os.getloadavg()
    print_table(f"Train step as one program or two, batch 8, one device -- {machine()}",
                ["config", "params", "compile one s", "compile two s", "one/two",
                 "step one ms", "step two ms", "step one/two"], rows,
                [f"step: median over {args.pairs} interleaved pairs (ratio: median [min, max] of "
                 f"the pairs); compile: trace + lower + XLA, one fresh process each, no cache; "
                 f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"])


if __name__ == "__main__":
    main()
