"""ODE log-likelihood: this project's diffrax solve against the official scipy host loop,
at equal tolerance and at equal error.

    python bench/ode_likelihood.py [--batch 16] [--gmm-batch 512] [--tols 1e-3,1e-4,1e-5] [--repeats 2]

Both integrate the augmented probability-flow ODE d[x, Δlogp]/dt = [f̃, ε̂ᵀ ∂f̃/∂x ε̂] from
ε = 1e-5 to T (VP SDE) with the same Rademacher probe ε̂ per sample, the same rtol = atol and
the Dormand–Prince 5(4) pair (scipy's RK45 = diffrax's Dopri5; Tsit5 shown too), in float32:

- diffrax: ``likelihood.get_likelihood_fn`` — the batch one ODE state (as scipy's), with scipy's
  step rule (``ode_solver.ScipyRK45Controller``: Dopri5 takes scipy's steps,
  bench/ode_accuracy.py), the whole solve one jit-compiled XLA program (parameters passed as
  arguments), the drift and the divergence from one JVP;
- scipy (as the official ``likelihood.py`` does it): ``scipy.integrate.solve_ivp(method='RK45')``
  drives a host loop; the batch is flattened into one float64 ODE state; each evaluation copies
  it to the device, calls a jitted drift and a jitted divergence (a VJP, ``jax.grad``, as the
  official code does) and copies the result back.

Every method runs at each rtol = atol of --tols; its error is |log p − log p_ref| / D (nats per
dimension, mean and max over the batch) against a float64 reference solve (diffrax Dopri5 at
rtol = atol = 1e-8, same probe). The second table gives time at equal error: for each scipy
point, the seconds (and NFE) each diffrax solver needs for scipy's mean error, interpolated
log–log along its own sweep, and the speed-up = scipy seconds / those.

Models: the exact score of the 2-D Gaussian mixture (``analytic.default_mixture``) and the tiny
DDPM++ (``configs/tiny/tiny_ddpmpp.py``, ~190 k parameters) trained for --train-steps Adam steps
of the DSM loss on the digits train split, evaluated on the test split (16×16, [−1, 1]).
Columns: wall time (fastest of --repeats after the first call; the first call, with compile,
separately), NFE (scipy: ``nfev``; diffrax: the solve's count, the drift and its JVP counted as
one evaluation as scipy's ``nfev`` counts drift + divergence), time per NFE and the part of it
that is not network work (the loop's own overhead: host round trips, conversions, the solver's
arithmetic), speed-up over scipy at the same tolerance, and the error.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    best_time,
    conv_score,
    digits,
    equal_error_rows,
    machine,
    pf_drift,
    print_table,
    timed,
    tiny_conv_model,
    to64,
    train_tiny,
)
from scipy import integrate

from score_sde_jax import analytic, likelihood, prng, sde_lib


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


REF_TOL = 1e-8


def sweep(name, sde, score, params, x, args, rows, equal_rows, ref_score=None):
    """Append, for model ``name`` on data ``x``, one row per method and tolerance to ``rows`` and
    the time-at-equal-error rows to ``equal_rows``; returns the network work per NFE.
    ``ref_score``: the float64 network of the reference solve (default ``score``)."""
    eps, rng = 1e-5, jax.random.PRNGKey(0)
    dim = int(np.prod(x.shape[1:]))
    probe = prng.rademacher(rng, x.shape, x.dtype)  # what get_likelihood_fn draws

    def diffrax_fn(solver, tol, max_steps=4096, score=score):
        lik = likelihood.get_likelihood_fn(sde, "rademacher", tol, tol, eps, solver=solver,
                                           max_steps=max_steps)
        return jax.jit(lambda p, r, x: lik(r, lambda y, t: score(p, y, t), x))

    with jax.enable_x64(True):  # the same probe: prng.rademacher draws it in float32 either way
        ref_fn = diffrax_fn("dopri5", REF_TOL, 100_000, ref_score or score)
        exact = np.asarray(ref_fn(to64(params), rng, to64(x))[0])
    scipy_work, jvp_work = network_work(sde, score, params, x, probe, max(5, args.repeats))
    results = {"scipy RK45": [], "diffrax dopri5": [], "diffrax tsit5": []}
    for tol in args.tols:
        for method in results:
            if method == "scipy RK45":
                fn, fn_args = scipy_likelihood(sde, score, params, x, probe, tol, tol, eps), ()
                work = scipy_work
            else:
                fn, fn_args, work = diffrax_fn(method.split()[1], tol), (params, rng, x), jvp_work
            first, _ = timed(fn, *fn_args)
            seconds, out = best_time(fn, *fn_args, repeats=args.repeats, warmup=0)
            logp, nfe = (out[0], out[1]) if method == "scipy RK45" else (out[0], int(np.max(out[2])))
            err = np.abs(np.asarray(logp, np.float64) - exact) / dim
            results[method].append((float(err.mean()), seconds, nfe))
            base = results["scipy RK45"][-1][1]
            rows.append([name, method, f"{tol:g}", f"{first:.2f}", f"{seconds * 1e3:.4g}", f"{nfe}",
                         f"{seconds / nfe * 1e3:.2f}", f"{(seconds / nfe - work) * 1e3:.2f}",
                         f"{base / seconds:.2f}", f"{err.mean():.1e} / {err.max():.1e}"])
        print(f"done {name} tol {tol:g}", flush=True)
    equal_rows += equal_error_rows(name, results, "scipy RK45")
    return scipy_work, jvp_work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="digits batch for the conv net")
    parser.add_argument("--gmm-batch", type=int, default=512)
    parser.add_argument("--tols", default="1e-3,1e-4,1e-5", help="rtol = atol of every solver, a sweep")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=400, help="Adam steps for the tiny DDPM++")
    parser.add_argument("--models", default="gmm,ddpmpp")
    args = parser.parse_args()
    args.tols = [float(t) for t in args.tols.split(",")]
    rows, equal_rows, notes = [], [], []

    if "gmm" in args.models.split(","):
        gmm, sde = analytic.default_mixture(), sde_lib.VPSDE()
        gmm_score = gmm.score_fn(sde)
        x = gmm.sample(jax.random.PRNGKey(1), args.gmm_batch)
        work = sweep(f"GMM exact score, 2-D, B={args.gmm_batch}", sde, lambda p, y, t: gmm_score(y, t), None,
                     x, args, rows, equal_rows)
        notes.append(f"GMM network work per NFE: scipy (drift + VJP) {work[0] * 1e3:.2f} ms, diffrax (JVP) "
                     f"{work[1] * 1e3:.2f} ms")
    if "ddpmpp" in args.models.split(","):
        config, sde, _, variables, score = tiny_conv_model("vpsde", init_scale=0.0)
        variables = train_tiny(sde, variables, score, args.train_steps)
        data = digits("test")[: args.batch]
        work = sweep(f"tiny DDPM++ 16x16x1, B={args.batch}", sde, score, variables, data, args, rows,
                     equal_rows, conv_score(config, sde, "float64"))
        notes.append(f"tiny DDPM++ network work per NFE: scipy (drift + VJP) {work[0] * 1e3:.2f} ms, diffrax "
                     f"(JVP) {work[1] * 1e3:.2f} ms: {work[0] / work[1]:.1f}x in diffrax's favour at equal "
                     f"NFE from the network work alone")

    print_table(
        f"ODE likelihood, VP SDE, eps = 1e-5, Rademacher probe, float32; {machine()}",
        ["model", "method", "rtol=atol", "1st call s", "time ms", "NFE", "ms/NFE", "not network",
         "speed-up", "|logp - ref|/D mean / max"], rows,
        ["time: fastest of --repeats after the first call; speed-up = scipy time / this time at the same "
         "tolerance; |.|/D in nats/dim; ref = float64 diffrax Dopri5 at rtol = atol = 1e-8, same probe.",
         "ms/NFE: time / NFE; not network: ms/NFE minus the network work of one NFE of that method "
         "(below), measured alone.", *notes])
    print()
    print_table(
        f"ODE likelihood at equal error (scipy's mean |logp - ref|/D at each tolerance); {machine()}",
        ["model", "scipy err", "scipy ms", "NFE", "dopri5 ms", "NFE", "speed-up", "tsit5 ms", "NFE",
         "speed-up"],
        equal_rows,
        ["dopri5 / tsit5 ms, NFE: interpolated log-log along that solver's tolerance sweep at scipy's error; "
         "'-': scipy's error is outside the solver's sweep."])


if __name__ == "__main__":
    main()
