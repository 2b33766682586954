"""GroupNorm alone on CPU, one thread: ``layers.GroupNorm`` against ``flax.linen.GroupNorm`` (and
``torch.nn.GroupNorm`` when ``--torch-python`` names a Python with torch).

    python bench/group_norm.py [--torch-python PATH/bin/python] [--reps 30]

Shapes (batch 8, 32 groups, eps 1e-6): 32x32x128, 16x16x256, 8x8x256. Forward, and forward +
backward (gradients of <y, c> w.r.t. x, scale and bias, a fixed cotangent c). The JAX variants
are timed interleaved (A, B, A, B, ...), median over ``--reps`` calls each; torch runs in its own
process (one thread, NCHW, the same number of calls) right after, so its column is not
interleaved. Everything runs pinned to one core. Ratios: flax / project and torch / project
(> 1: the project is faster).
"""

from __future__ import annotations

import os

os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core (and torch's child too)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine, print_table  # noqa: E402
from score_sde_jax.models import layers  # noqa: E402

SHAPES = [(8, 32, 32, 128), (8, 16, 16, 256), (8, 8, 8, 256)]
TORCH = """
import json, sys, time, torch
torch.set_num_threads(1)
shapes, reps = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for b, h, w, c in shapes:
    gn = torch.nn.GroupNorm(32, c, eps=1e-6)
    x = torch.randn(b, c, h, w) * 2 + 1
    xg, ct = x.clone().requires_grad_(True), torch.randn(b, c, h, w)
    def fwd():
        with torch.no_grad():
            gn(x)
    def fwd_bwd():
        gn(xg).backward(ct)
    row = []
    for fn in (fwd, fwd_bwd):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
        row.append(sorted(times)[reps // 2])
    out.append(row)
print(json.dumps(out))
"""


def jax_calls(shape) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(0), shape) * 2 + 1
    ct = jax.random.normal(jax.random.PRNGKey(1), shape)
    flax_gn, mine = nn.GroupNorm(num_groups=32), layers.GroupNorm(num_groups=32)
    v = flax_gn.init(jax.random.PRNGKey(2), x)
    out = {}
    for name, module in (("flax", flax_gn), ("project", mine)):
        def grad(v, x, module=module):
            return jax.grad(lambda v, x: jnp.vdot(module.apply(v, x), ct), argnums=(0, 1))(v, x)

        fwd, bwd = jax.jit(module.apply), jax.jit(grad)
        out[name, "fwd"] = lambda f=fwd: jax.block_until_ready(f(v, x))
        out[name, "fwd+bwd"] = lambda f=bwd: jax.block_until_ready(f(v, x))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="", help="a Python with torch")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    measured = []
    for shape in SHAPES:
        calls = jax_calls(shape)
        for fn in calls.values():
            fn()
        times = {k: [] for k in calls}
        for _ in range(args.reps):
            for k, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        measured.append({k: float(np.median(v)) for k, v in times.items()})
    torch_rows = None
    if args.torch_python:
        done = subprocess.run([args.torch_python, "-c", TORCH, json.dumps(SHAPES), str(args.reps)],
                              capture_output=True, text=True, check=True)
        torch_rows = json.loads(done.stdout)
    rows = []
    for i, shape in enumerate(SHAPES):
        for j, what in enumerate(("fwd", "fwd+bwd")):
            f, p = measured[i]["flax", what], measured[i]["project", what]
            row = ["x".join(map(str, shape)), what, f"{f * 1e3:.3f}", f"{p * 1e3:.3f}", f"{f / p:.2f}"]
            if torch_rows is not None:
                t = torch_rows[i][j]
                row += [f"{t * 1e3:.3f}", f"{t / p:.2f}"]
            rows.append(row)
    header = ["shape", "call", "flax ms", "project ms", "flax/project"]
    if torch_rows is not None:
        header += ["torch ms", "torch/project"]
    load = os.getloadavg()
    print_table(f"GroupNorm, one thread -- {machine()}", header, rows,
                [f"median of {args.reps} calls; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"])


if __name__ == "__main__":
    main()
