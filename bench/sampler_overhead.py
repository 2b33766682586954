"""Sampler loop overhead: time per network evaluation inside each sampler vs one bare evaluation.

    python bench/sampler_overhead.py [--batch 16] [--steps 100] [--repeats 3]

Model: the tiny DDPM++ (``configs/tiny/tiny_ddpmpp.py``, untrained, init_scale 1, 16×16×1), VP SDE
with N = --steps. Baseline: one jitted score evaluation ``score(params, x, t)`` on the batch. Rows:

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
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, machine, pf_drift, print_table, tiny_conv_model
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

    def run(params, rng):
        x = np.asarray(sde.prior_sampling(rng, shape), np.float64).reshape(-1)
        def f(t, y):
            y = jnp.asarray(y.reshape(shape), jnp.float32)
            return np.asarray(drift(params, y, t), np.float64).reshape(-1)

        sol = integrate.solve_ivp(f, (sde.T, eps), x, rtol=tol, atol=tol, method="RK45")
        return sol.y[:, -1].reshape(shape), sol.nfev

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of both ODE samplers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config, sde, eps, params, score = tiny_conv_model("vpsde", num_scales=args.steps)
    shape = (args.batch, config.data.image_size, config.data.image_size, config.data.num_channels)
    rng = jax.random.PRNGKey(0)
    x = sde.prior_sampling(rng, shape)
    t = jnp.full((args.batch,), 0.5)

    one, _ = best_time(jax.jit(score), params, x, t, repeats=max(10, args.repeats))

    pc = sampling.get_pc_sampler(sde, shape, "euler_maruyama", "none", eps=eps)
    pc_jit = jax.jit(lambda p, r: pc(r, lambda y, s: score(p, y, s)))
    def ode_jit(solver):
        ode = sampling.get_ode_sampler(sde, shape, args.tol, args.tol, solver, eps)
        return jax.jit(lambda p, r: ode(r, lambda y, s: score(p, y, s)))

    loop, host_ode = python_loop_pc(sde, score, shape, eps), scipy_ode(sde, score, shape, eps, args.tol)

    rows = [["one score evaluation (jit)", 1, f"{one * 1e3:.2f}", f"{one * 1e3:.2f}", "1.000"]]
    for name, fn in [("PC EM, lax.scan (jit)", pc_jit), ("PC EM, Python loop over jitted step", loop),
                     ("ODE diffrax Dopri5 (jit)", ode_jit("dopri5")),
                     ("ODE diffrax Tsit5 (jit)", ode_jit("tsit5")), ("ODE scipy RK45 host loop", host_ode)]:
        seconds, out = best_time(fn, params, rng, repeats=args.repeats)
        nfe = int(out[1]) if isinstance(out, tuple) else args.steps
        rows.append([name, nfe, f"{seconds * 1e3:.1f}", f"{seconds / nfe * 1e3:.2f}",
                     f"{seconds / (nfe * one):.3f}"])
    print_table(
        f"Sampler overhead, tiny DDPM++ 16x16x1, batch {args.batch}, VP N={args.steps}, ODE rtol=atol="
        f"{args.tol:g}; {machine()}",
        ["sampler", "NFE", "time ms", "ms / NFE", "ratio to 1 eval"], rows,
        ["ratio = time / (NFE x one evaluation); fastest of --repeats after a warm-up. A ratio below 1: "
         "the bare evaluation pays one dispatch per call, the compiled loops pay it once."])


if __name__ == "__main__":
    main()
