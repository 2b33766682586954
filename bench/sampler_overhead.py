"""Sampler loop overhead: time per network evaluation inside each sampler vs one bare evaluation.

    python bench/sampler_overhead.py [--batch 16] [--steps 100] [--repeats 3]

Model: the tiny DDPM++ (``configs/tiny/tiny_ddpmpp.py``, 16×16×1) trained for --train-steps
Adam steps on the digits (an untrained network's probability-flow ODE is chaotic, so its
solves at these tolerances do not converge to one answer), VP SDE with N = --steps. Baseline:
one jitted score evaluation ``score(params, x, t)`` on the batch. Rows:

- PC, lax.scan: ``sampling.get_pc_sampler`` (Euler–Maruyama, no corrector, N NFE), jit-compiled;
- PC, Python loop: the official-PyTorch-style loop, ``for t in timesteps: x = step(rng, x, t)``
  with the predictor step jitted (one dispatch and one host-side loop iteration per step);
- ODE, diffrax: ``sampling.get_ode_sampler`` (Dopri5 = scipy's RK45 pair, and Tsit5;
  rtol = atol = 1e-3), jit-compiled;
- ODE, scipy RK45 host loop: the official JAX ODE sampler's way (flattened numpy state, one
  device round trip per evaluation, the drift jitted), same rtol/atol.

Each: fastest of --repeats after a warm-up. Ratio = time / (NFE × one evaluation); the goal for
the jit-compiled samplers is ≤ 1.05. The per-step work besides the network (noise draws, the
update, the solver's error control) is the overhead the ratio shows.

Then the three ODE samplers at equal error: each runs from the same prior draw at every
rtol = atol of --tols; its error is the RMS of x − x_ref against a float64 reference solve
(diffrax Dopri5 at rtol = atol = 1e-8), and the last table gives, for each scipy point, the time
and NFE each diffrax solver needs for scipy's error (log–log interpolation along its sweep) and
the speed-up = scipy time / that time.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    best_time,
    conv_score,
    equal_error_rows,
    machine,
    pf_drift,
    print_table,
    tiny_conv_model,
    to64,
    train_tiny,
)
from scipy import integrate

from score_sde_jax import sampling


def python_loop_pc(sde, score, shape, eps):
    """The official PyTorch sampler's shape: a Python loop over a jitted predictor step."""
    def rsde_of(p):
        return sde.reverse(lambda y, t: score(p, y, t), probability_flow=False)

    @jax.jit
    def step(params, rng, x, t):
        vec_t = jnp.full((shape[0],), t)
        return sampling.euler_maruyama(rng, x, vec_t, None, sde, rsde_of(params))

    def run(params, rng):
        rng, prior = jax.random.split(rng)
        x = sde.prior_sampling(prior, shape)
        for t in np.linspace(sde.T, eps, sde.N):
            rng, key = jax.random.split(rng)
            x, x_mean = step(params, key, x, t)
        return x_mean

    return run


def scipy_ode(sde, score, shape, eps, tol):
    """The official ODE sampler's shape: solve_ivp RK45 on a flattened numpy state."""

    pf = pf_drift(sde, score)

    @jax.jit
    def drift(params, x, t):
        return pf(params, x, jnp.full((shape[0],), t))

    def run(params, z):
        x = np.asarray(z, np.float64).reshape(-1)

        def f(t, y):
            y = jnp.asarray(y.reshape(shape), jnp.float32)
            return np.asarray(drift(params, y, t), np.float64).reshape(-1)

        sol = integrate.solve_ivp(f, (sde.T, eps), x, rtol=tol, atol=tol, method="RK45")
        return sol.y[:, -1].reshape(shape), sol.nfev

    return run


REF_TOL = 1e-8


def ode_samplers(sde, score, shape, eps, tol, max_steps=4096):
    """{method: fn(params, z) -> (x, nfe)}: the diffrax ODE sampler (Dopri5, Tsit5), jitted, and
    the scipy RK45 host loop, all from the prior draw ``z``."""
    def diffrax_ode(solver):
        ode = sampling.get_ode_sampler(sde, shape, tol, tol, solver, eps, max_steps=max_steps)
        return jax.jit(lambda p, z: ode(None, lambda y, s: score(p, y, s), z=z))

    return {"ODE diffrax Dopri5 (jit)": diffrax_ode("dopri5"),
            "ODE diffrax Tsit5 (jit)": diffrax_ode("tsit5"),
            "ODE scipy RK45 host loop": scipy_ode(sde, score, shape, eps, tol)}


def equal_error(sde, score, ref_score, params, shape, eps, z, tols, repeats):
    """(rows of every ODE sampler at every tolerance, time-at-equal-error rows against scipy);
    ``ref_score``: the float64 network of the reference solve."""
    with jax.enable_x64(True):
        ref_fn = ode_samplers(sde, ref_score, shape, eps, REF_TOL, 100_000)["ODE diffrax Dopri5 (jit)"]
        ref = np.asarray(ref_fn(to64(params), to64(z))[0])
    sweeps, rows = {}, []
    for tol in tols:
        for name, fn in ode_samplers(sde, score, shape, eps, tol).items():
            seconds, (x, nfe) = best_time(fn, params, z, repeats=repeats)
            err = float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)))
            sweeps.setdefault(name.split(" (")[0].replace("ODE ", ""), []).append((err, seconds, int(nfe)))
            rows.append([name, f"{tol:g}", int(nfe), f"{seconds * 1e3:.1f}", f"{err:.2e}"])
    return rows, equal_error_rows("tiny DDPM++", sweeps, "scipy RK45 host loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3, help="ODE rtol = atol, overhead rows")
    parser.add_argument("--tols", default="1e-3,1e-4,1e-5", help="the sweep of the equal-error tables")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=400, help="Adam steps for the tiny DDPM++")
    args = parser.parse_args()
    config, sde, eps, params, score = tiny_conv_model("vpsde", init_scale=0.0, num_scales=args.steps)
    params = train_tiny(sde, params, score, args.train_steps)
    shape = (args.batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    rng = jax.random.PRNGKey(0)
    x = sde.prior_sampling(rng, shape)
    t = jnp.full((args.batch,), 0.5)

    one, _ = best_time(jax.jit(score), params, x, t, repeats=max(10, args.repeats))

    pc = sampling.get_pc_sampler(sde, shape, "euler_maruyama", "none", eps=eps)
    pc_jit = jax.jit(lambda p, r: pc(r, lambda y, s: score(p, y, s)))
    loop = python_loop_pc(sde, score, shape, eps)

    rows = [["one score evaluation (jit)", 1, f"{one * 1e3:.2f}", f"{one * 1e3:.2f}", "1.000"]]
    runs = [("PC EM, lax.scan (jit)", pc_jit, rng), ("PC EM, Python loop over jitted step", loop, rng)]
    runs += [(name, fn, x) for name, fn in ode_samplers(sde, score, shape, eps, args.tol).items()]
    for name, fn, arg in runs:
        seconds, out = best_time(fn, params, arg, repeats=args.repeats)
        nfe = int(out[1]) if isinstance(out, tuple) else args.steps
        rows.append([name, nfe, f"{seconds * 1e3:.1f}", f"{seconds / nfe * 1e3:.2f}",
                     f"{seconds / (nfe * one):.3f}"])
    print_table(
        f"Sampler overhead, tiny DDPM++ 16x16x1, batch {args.batch}, VP N={args.steps}, ODE rtol=atol="
        f"{args.tol:g}; {machine()}",
        ["sampler", "NFE", "time ms", "ms / NFE", "ratio to 1 eval"], rows,
        ["ratio = time / (NFE x one evaluation); fastest of --repeats after a warm-up. A ratio below 1: "
         "the bare evaluation pays one dispatch per call, the compiled loops pay it once."])

    tols = [float(t) for t in args.tols.split(",")]
    sweep_rows, equal_rows = equal_error(sde, score, conv_score(config, sde, "float64"), params, shape, eps,
                                         x, tols, args.repeats)
    print()
    print_table(f"ODE samplers against a float64 reference (rtol = atol = {REF_TOL:g}), same prior draw",
                ["sampler", "rtol=atol", "NFE", "time ms", "RMS err"], sweep_rows)
    print()
    print_table(
        "ODE samplers at equal error (scipy's RMS error at each of its tolerances)",
        ["model", "scipy err", "scipy ms", "NFE", "dopri5 ms", "NFE", "speed-up", "tsit5 ms", "NFE",
         "speed-up"], equal_rows,
        ["dopri5 / tsit5 ms, NFE: interpolated log-log along that solver's tolerance sweep at scipy's error; "
         "'-': outside its sweep."])


if __name__ == "__main__":
    main()
