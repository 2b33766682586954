"""ODE log-likelihood: this project's diffrax solve against the official scipy host loop.

    python bench/ode_likelihood.py [--batch 16] [--gmm-batch 512] [--tol 1e-5] [--repeats 3]

Both integrate the augmented probability-flow ODE d[x, Δlogp]/dt = [f̃, ε̂ᵀ ∂f̃/∂x ε̂] from
ε = 1e-5 to T (VP SDE) with the same Rademacher probe ε̂ per sample, the same rtol = atol and
the Dormand–Prince 5(4) pair (scipy's RK45 = diffrax's Dopri5; Tsit5 shown too):

- diffrax: ``likelihood.get_likelihood_fn`` — the batch one ODE state (as scipy's; since
  2026-12-01 with scipy's step rule, so Dopri5 takes the same steps and has the same error:
  bench/ode_accuracy.py), the whole solve one jit-compiled XLA program (parameters passed as
  arguments);
- scipy (as the official ``likelihood.py`` does it): ``scipy.integrate.solve_ivp(method='RK45')``
  drives a host loop; the batch is flattened into one float64 ODE state; each evaluation copies
  it to the device, calls a jitted drift and a jitted divergence (a VJP, ``jax.grad``, as the
  official code does) and copies the result back.

Models: the exact score of the 2-D Gaussian mixture (``analytic.default_mixture``) and the tiny
DDPM++ (``configs/tiny/tiny_ddpmpp.py``, ~190 k parameters) trained for --train-steps Adam steps
of the DSM loss on the digits train split, evaluated on the test split (16×16, [−1, 1]).
Columns: wall time (fastest of --repeats after the first call; the first call, with compile,
separately), NFE (scipy: ``nfev``; diffrax: mean / max over the per-sample solves, the drift and
its JVP counted as one evaluation as scipy's ``nfev`` counts drift + divergence), time per NFE
and the part of it that is not network work (the loop's own overhead: host round trips,
conversions, the solver's arithmetic), speed-up over scipy, the log-likelihood difference to
the scipy result and the error against a reference solve (diffrax Dopri5 at rtol = atol =
--tol / 1000), in nats per dimension (mean and max).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, digits, machine, pf_drift, print_table, timed, tiny_conv_model, train_tiny
from scipy import integrate

from score_sde_jax import analytic, likelihood, sde_lib


def scipy_likelihood(sde, score, params, x, probe, rtol, atol, eps):
    """The official host loop: returns a function () -> (logp (B,), nfe)."""
    shape, batch = x.shape, x.shape[0]
    drift = pf_drift(sde, score)
    drift_fn = jax.jit(drift)

    @jax.jit
    def div_fn(params, x, t, probe):
        grad = jax.grad(lambda y: jnp.sum(drift(params, y, t) * probe))(x)
        return jnp.sum(grad * probe, axis=tuple(range(1, x.ndim)))

    def ode_func(t, state):
        sample = jnp.asarray(state[:-batch].reshape(shape), jnp.float32)
        vec_t = jnp.full((batch,), t, jnp.float32)
        d = np.asarray(drift_fn(params, sample, vec_t)).reshape(-1)
        g = np.asarray(div_fn(params, sample, vec_t, probe)).reshape(-1)
        return np.concatenate([d, g])

    def run():
        init = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(batch)])
        sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
        end = sol.y[:, -1]
        z = jnp.asarray(end[:-batch].reshape(shape), jnp.float32)
        return np.asarray(sde.prior_logp(z)) + end[-batch:], sol.nfev

    return run


def network_work(sde, score, params, x, probe, repeats):
    """Seconds of the network work one NFE costs each method, at the batch of ``x``:
    scipy: the drift plus the divergence by a VJP (two jitted calls, as the official code);
    diffrax: one JVP of the drift (the drift and ε̂ᵀ ∂f̃/∂x together)."""
    t = jnp.full((x.shape[0],), 0.5)
    pf = pf_drift(sde, score)

    def drift(params, y):
        return pf(params, y, t)

    vjp_div = jax.jit(lambda p, y: jax.grad(lambda v: jnp.sum(drift(p, v) * probe))(y))
    jvp = jax.jit(lambda p, y: jax.jvp(lambda v: drift(p, v), (y,), (probe,)))
    forward = best_time(jax.jit(drift), params, x, repeats=repeats)[0]
    return forward + best_time(vjp_div, params, x, repeats=repeats)[0], best_time(jvp, params, x,
                                                                                   repeats=repeats)[0]


def compare(name, sde, score, params, x, args, rows):
    """Append one scipy row and one row per diffrax solver for model ``name`` on data ``x``."""
    eps, rng = 1e-5, jax.random.PRNGKey(0)
    dim = int(np.prod(x.shape[1:]))
    probe = jax.random.rademacher(rng, x.shape).astype(x.dtype)  # what get_likelihood_fn draws

    def diffrax_fn(solver, tol):
        lik = likelihood.get_likelihood_fn(sde, "rademacher", tol, tol, eps, solver=solver)
        return jax.jit(lambda p, r, x: lik(r, lambda y, t: score(p, y, t), x))

    exact = np.asarray(diffrax_fn("dopri5", args.tol / 1000)(params, rng, x)[0], np.float64)
    run = scipy_likelihood(sde, score, params, x, probe, args.tol, args.tol, eps)
    first, _ = timed(run)
    base, (ref, ref_nfe) = best_time(run, repeats=args.repeats, warmup=0)

    def errors(logp):
        diff, err = np.abs(logp - ref) / dim, np.abs(logp - exact) / dim
        return [f"{diff.mean():.1e} / {diff.max():.1e}", f"{err.mean():.1e} / {err.max():.1e}"]

    scipy_work, jvp_work = network_work(sde, score, params, x, probe, max(5, args.repeats))

    def per_nfe(seconds, nfe, work):  # [ms / NFE, of which not network work]
        return [f"{seconds / nfe * 1e3:.2f}", f"{(seconds / nfe - work) * 1e3:.2f}"]

    rows.append([name, "scipy RK45 host loop (official)", f"{first:.2f}", f"{base:.3f}", f"{ref_nfe}",
                 *per_nfe(base, ref_nfe, scipy_work), "1.0", *errors(ref)])
    for solver in ("dopri5", "tsit5"):
        fn = diffrax_fn(solver, args.tol)
        first, _ = timed(fn, params, rng, x)
        seconds, (logp, _, nfe) = best_time(fn, params, rng, x, repeats=args.repeats, warmup=0)
        rows.append([name, f"diffrax {solver}, jit", f"{first:.2f}", f"{seconds:.3f}",
                     f"{float(np.mean(nfe)):.0f} / {int(np.max(nfe))}",
                     *per_nfe(seconds, int(np.max(nfe)), jvp_work), f"{base / seconds:.1f}",
                     *errors(np.asarray(logp, np.float64))])
    return scipy_work, jvp_work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="digits batch for the conv net")
    parser.add_argument("--gmm-batch", type=int, default=512)
    parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of every solver")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=400, help="Adam steps for the tiny DDPM++")
    args = parser.parse_args()
    rows = []

    gmm, sde = analytic.default_mixture(), sde_lib.VPSDE()
    gmm_score = gmm.score_fn(sde)
    x = gmm.sample(jax.random.PRNGKey(1), args.gmm_batch)
    notes = []
    work = compare(f"GMM exact score, 2-D, B={args.gmm_batch}", sde, lambda p, y, t: gmm_score(y, t), None,
                   x, args, rows)
    notes.append(f"GMM network work per NFE: scipy (drift + VJP) {work[0] * 1e3:.2f} ms, diffrax (JVP) "
                 f"{work[1] * 1e3:.2f} ms")

    _, sde, _, variables, score = tiny_conv_model("vpsde", init_scale=0.0)
    variables = train_tiny(sde, variables, score, args.train_steps)
    work = compare(f"tiny DDPM++ 16x16x1, B={args.batch}", sde, score, variables,
                   digits("test")[: args.batch], args, rows)
    notes.append(f"tiny DDPM++ network work per NFE: scipy (drift + VJP) {work[0] * 1e3:.2f} ms, diffrax "
                 f"(JVP) {work[1] * 1e3:.2f} ms: {work[0] / work[1]:.1f}x in diffrax's favour at equal NFE "
                 f"from the network work alone")

    print_table(
        f"ODE likelihood, VP SDE, rtol = atol = {args.tol:g}, eps = 1e-5, Rademacher probe; {machine()}",
        ["model", "method", "1st call s", "time s", "NFE", "ms/NFE", "not network", "speed-up",
         "|logp - scipy|/D mean / max", "|logp - ref|/D mean / max"], rows,
        ["time: fastest of --repeats after the first call; speed-up = scipy time / this time; "
         "|.|/D in nats/dim; ref = diffrax Dopri5 at rtol = atol = tol/1000, same probe.",
         "ms/NFE: time / NFE (diffrax: the max NFE over the batch); not network: "
         "ms/NFE minus the network work of one NFE of that method (below), measured alone.", *notes])


if __name__ == "__main__":
    main()
