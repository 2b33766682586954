"""GroupNorm alone on CPU, one thread: ``layers.GroupNorm`` against ``flax.linen.GroupNorm`` (and
``torch.nn.GroupNorm`` when ``--torch-python`` names a Python with torch).

    python bench/group_norm.py [--torch-python PATH/bin/python] [--reps 30]

Shapes (batch 8, 32 groups, eps 1e-6): 32x32x128, 16x16x256, 8x8x256. Forward, and forward +
backward (gradients of <y, c> w.r.t. x, scale and bias, a fixed cotangent c). The JAX variants
are timed interleaved (A, B, A, B, ...), median over ``--reps`` calls each; torch runs in its own
process (one thread, NCHW, the same number of calls) right after, so its column is not
interleaved. Everything runs pinned to one core. Ratios: flax / project and torch / project
(> 1: the project is faster). ``bench/device_suite.py`` times the same calls on an accelerator
(:func:`jax_calls`, :data:`TORCH` with ``device="cuda"``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine, print_table  # noqa: E402
from score_sde_jax.models import layers  # noqa: E402

SHAPES = [(8, 32, 32, 128), (8, 16, 16, 256), (8, 8, 8, 256)]
# argv: shapes (JSON), reps, calls per timing, device ("cpu": one thread; "cuda"). Prints the
# median seconds per call, [[fwd, fwd+bwd] per shape], as JSON.
TORCH = """
import json, sys, time, torch
shapes, reps, calls, device = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if device == "cpu":
    torch.set_num_threads(1)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
out = []
for b, h, w, c in shapes:
    gn = torch.nn.GroupNorm(32, c, eps=1e-6).to(device)
    x = torch.randn(b, c, h, w, device=device) * 2 + 1
    xg, ct = x.clone().requires_grad_(True), torch.randn(b, c, h, w, device=device)
    def fwd():
        with torch.no_grad():
            gn(x)
    def fwd_bwd():
        gn(xg).backward(ct)
    row = []
    for fn in (fwd, fwd_bwd):
        fn(); sync()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(); times.append((time.perf_counter() - t) / calls)
        row.append(sorted(times)[reps // 2])
    out.append(row)
print(json.dumps(out))
"""


def jax_calls(shape, calls: int = 1) -> dict:
    """{(``"flax"`` | ``"project"``, ``"fwd"`` | ``"fwd+bwd"``): fn}; each fn makes ``calls``
    back-to-back jitted calls and blocks on the last."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape) * 2 + 1
    ct = jax.random.normal(jax.random.PRNGKey(1), shape)
    flax_gn, mine = nn.GroupNorm(num_groups=32), layers.GroupNorm(num_groups=32)
    v = flax_gn.init(jax.random.PRNGKey(2), x)
    out = {}
    for name, module in (("flax", flax_gn), ("project", mine)):
        def grad(v, x, module=module):
            return jax.grad(lambda v, x: jnp.vdot(module.apply(v, x), ct), argnums=(0, 1))(v, x)

        def repeat(f):
            def run():
                for _ in range(calls - 1):
                    f(v, x)
                return jax.block_until_ready(f(v, x))
            return run

        out[name, "fwd"], out[name, "fwd+bwd"] = repeat(jax.jit(module.apply)), repeat(jax.jit(grad))
    return out


def time_jax(shapes, reps: int, calls: int = 1) -> list[dict]:
    """Per shape, the median seconds per call of each of :func:`jax_calls`' functions (one
    untimed warm-up call each, then ``reps`` timings of ``calls`` calls, the functions
    interleaved)."""
    measured = []
    for shape in shapes:
        fns = jax_calls(shape, calls)
        for fn in fns.values():
            fn()
        times = {k: [] for k in fns}
        for _ in range(reps):
            for k, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - start) / calls)
        measured.append({k: float(np.median(v)) for k, v in times.items()})
    return measured


def run_torch(python: str, shapes, reps: int, calls: int = 1, device: str = "cpu") -> list:
    """:data:`TORCH` in a child process of ``python``: [[fwd s, fwd+bwd s] per shape]."""
    done = subprocess.run([python, "-c", TORCH, json.dumps(shapes), str(reps), str(calls), device],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core (and torch's child too)
    # Read when the CPU backend starts, i.e. at the first computation below.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="", help="a Python with torch")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    measured = time_jax(SHAPES, args.reps)
    torch_rows = run_torch(args.torch_python, SHAPES, args.reps) if args.torch_python else None
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
