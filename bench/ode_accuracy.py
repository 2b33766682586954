"""ODE sampler and likelihood accuracy at equal rtol = atol: this project, scipy RK45, diffrax PID.

    python bench/ode_accuracy.py [--tols 1e-3,1e-4,1e-5] [--gmm-batch 64] [--batch 2]
        [--train-steps 200] [--models gmm_vp,gmm_ve,ddpmpp,ncsnpp]

Everything in float64 (``jax_enable_x64``; the networks trained in float32, then their parameters
cast and ``model.dtype = 'float64'``), so the differences are the solvers' alone. Error =
distance to a reference solve at rtol = atol = 1e-8 (this project's solver, same probe, same
prior draw):

- sampler: the PF-ODE from T to ε (VP 1e-3, VE 1e-5) for a batch from one prior draw, the batch
  one ODE state in every method (as the official sampler); error = RMS over all elements of
  x − x_ref;
- likelihood: the augmented ODE [x, Δlogp] from ε = 1e-5 to T, Rademacher probe; bits/dim error
  |bpd − bpd_ref| (mean / max over the batch) and the latent's RMS error |z − z_ref|.

Methods, at each tolerance:

- ``ours``: ``sampling.get_ode_sampler`` / ``likelihood.get_likelihood_fn`` (diffrax Dopri5 with
  ``ode_solver.ScipyRK45Controller``; the batch one ODE state);
- ``scipy RK45``: the official host loop, ``solve_ivp(method='RK45')`` on the flattened batch
  (the likelihood's drift and JVP divergence in one jitted call per evaluation);
- ``ours per-sample`` (likelihood only): ``get_likelihood_fn(per_sample=True)``, one solve per
  sample (mean NFE);
- ``diffrax PID (before)``: this project's earlier default, ``diffrax.PIDController(rtol, atol)``
  with Dopri5's own error estimate (NFE counted without the start-up evaluations' +2).

NFE: scipy's ``nfev``; ours: the count of ``solve_ode`` (likelihood: mean over the per-sample
solves). Time: one call after compilation, wall seconds (noisy on a shared machine). Models: the
exact score of ``analytic.default_mixture()`` under the VP and VE SDEs, and the tiny DDPM++ (VP)
and NCSN++ (VE) of ``configs/tiny`` trained for --train-steps Adam steps on the digits, the
likelihood evaluated on the first --batch test digits.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import conv_score, digits, machine, pf_drift, print_table, tiny_conv_model, to64, train_tiny  # noqa: E402
from scipy import integrate  # noqa: E402

from score_sde_jax import analytic, likelihood, ode_solver, prng, sampling, sde_lib  # noqa: E402

REF_TOL = 1e-8


@contextlib.contextmanager
def previous_default():
    """Trace solve_ode with the earlier controller, diffrax.PIDController(rtol, atol)."""
    keep = ode_solver.ScipyRK45Controller
    ode_solver.ScipyRK45Controller = lambda rtol, atol, _scale: diffrax.PIDController(rtol=rtol, atol=atol)
    try:
        yield
    finally:
        ode_solver.ScipyRK45Controller = keep


def wall(fn, *args):
    """(seconds of one call after a compiling one, output)."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def scipy_solve(f, y0, t0, t1, tol):
    """solve_ivp RK45 on the flattened float64 state; f(t, y) jitted on the same flat shape."""
    sol = integrate.solve_ivp(lambda t, y: np.asarray(f(t, jnp.asarray(y))), (t0, t1), np.asarray(y0),
                              rtol=tol, atol=tol, method="RK45")
    return sol.y[:, -1], sol.nfev


def sampler_rows(name, sde, eps, score, params, shape, tols, rows):
    z = sde.prior_sampling(jax.random.PRNGKey(0), shape)

    def ours(tol, max_steps=4096):
        ode = sampling.get_ode_sampler(sde, shape, tol, tol, eps=eps, max_steps=max_steps)
        return jax.jit(lambda p, z: ode(None, lambda y, t: score(p, y, t), z=z))

    ref = np.asarray(ours(REF_TOL, 100_000)(params, z)[0])
    drift = pf_drift(sde, score)
    flat = jax.jit(lambda t, y: drift(params, y.reshape(shape), jnp.full((shape[0],), t)).reshape(-1))

    def err(x):
        return np.sqrt(np.mean((np.asarray(x).reshape(shape) - ref) ** 2))

    for tol in tols:
        start = time.perf_counter()
        x, nfe = scipy_solve(flat, np.asarray(z).reshape(-1), sde.T, eps, tol)
        scipy_s, scipy_err = time.perf_counter() - start, err(x)
        cells = [[f"{scipy_err:.2e}", f"{nfe}", f"{scipy_s:.2f}"]]
        for before in (False, True):
            with previous_default() if before else contextlib.nullcontext():
                seconds, (x, nfe) = wall(ours(tol), params, z)
            cells.append([f"{err(x):.2e}", f"{int(nfe)}", f"{seconds:.2f}", f"{err(x) / scipy_err:.2f}"])
        rows.append([name, "sampler x RMS", f"{tol:g}", *cells[0], *cells[1], *cells[2], "-", "-", "-", "-"])


def likelihood_rows(name, sde, score, params, x, tols, rows, centered=True):
    eps, rng, dim, batch = 1e-5, jax.random.PRNGKey(0), int(np.prod(x.shape[1:])), x.shape[0]
    probe = prng.rademacher(rng, x.shape, x.dtype)  # what get_likelihood_fn draws
    offset = likelihood.bpd_offset(centered)

    def ours(tol, max_steps=4096, per_sample=False):
        lik = likelihood.get_likelihood_fn(sde, "rademacher", tol, tol, eps, max_steps=max_steps,
                                           per_sample=per_sample)
        return jax.jit(lambda p, x: lik(rng, lambda y, t: score(p, y, t), x))

    ref_logp, ref_z, _ = ours(REF_TOL, 100_000)(params, x)
    ref_bpd = np.asarray(likelihood.bits_per_dim(ref_logp, dim, offset))
    drift = pf_drift(sde, score)

    def aug(t, y):  # flattened [x (B·D), Δlogp (B)] -> its time derivative
        xs = y[:-batch].reshape(x.shape)
        f, jvp = jax.jvp(lambda v: drift(params, v, jnp.full((batch,), t)), (xs,), (probe,))
        return jnp.concatenate([f.reshape(-1), jnp.sum(jvp * probe, axis=tuple(range(1, x.ndim)))])

    aug = jax.jit(aug)

    def errs(logp, z):
        e = np.abs(np.asarray(likelihood.bits_per_dim(logp, dim, offset)) - ref_bpd)
        ez = np.sqrt(np.mean((np.asarray(z) - np.asarray(ref_z)) ** 2))
        return e, ez

    for tol in tols:
        start = time.perf_counter()
        y0 = np.concatenate([np.asarray(x).reshape(-1), np.zeros(batch)])
        y, nfe = scipy_solve(aug, y0, eps, sde.T, tol)
        scipy_s = time.perf_counter() - start
        z = y[:-batch].reshape(x.shape)
        scipy_e, scipy_ez = errs(np.asarray(sde.prior_logp(jnp.asarray(z))) + y[-batch:], z)
        cells = [[f"{scipy_e.mean():.1e}/{scipy_e.max():.1e}", f"{nfe}", f"{scipy_s:.2f}"]]
        zcells = [[f"{scipy_ez:.2e}", f"{nfe}", f"{scipy_s:.2f}"]]
        for before, per_sample in ((False, False), (True, False), (False, True)):
            with previous_default() if before else contextlib.nullcontext():
                seconds, (logp, zz, nfe) = wall(ours(tol, per_sample=per_sample), params, x)
            e, ez = errs(logp, zz)
            n = f"{float(np.mean(nfe)):.0f}"
            cells.append([f"{e.mean():.1e}/{e.max():.1e}", n, f"{seconds:.2f}",
                          f"{e.mean() / scipy_e.mean():.2f}"])
            zcells.append([f"{ez:.2e}", n, f"{seconds:.2f}", f"{ez / scipy_ez:.2f}"])
        rows.append([name, "lik. bpd mean/max", f"{tol:g}", *cells[0], *cells[1], *cells[2], *cells[3]])
        rows.append([name, "lik. z RMS", f"{tol:g}", *zcells[0], *zcells[1], *zcells[2], *zcells[3]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tols", default="1e-3,1e-4,1e-5")
    parser.add_argument("--gmm-batch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2, help="digits per conv-net solve")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--models", default="gmm_vp,gmm_ve,ddpmpp,ncsnpp")
    args = parser.parse_args()
    tols = [float(t) for t in args.tols.split(",")]
    models = args.models.split(",")
    rows = []
    gmm = analytic.default_mixture()
    for key, sde, eps in (("gmm_vp", sde_lib.VPSDE(), 1e-3), ("gmm_ve", sde_lib.VESDE(), 1e-5)):
        if key in models:
            s = gmm.score_fn(sde)
            score = lambda p, y, t, s=s: s(y, t)  # noqa: E731
            name = f"GMM {type(sde).__name__}"
            sampler_rows(name, sde, eps, score, None, (args.gmm_batch, 2), tols, rows)
            likelihood_rows(name, sde, score, None, gmm.sample(jax.random.PRNGKey(1), args.gmm_batch), tols,
                            rows)
            print(f"done {key}", flush=True)
    for key, label, path, sde_name in (("ddpmpp", "DDPM++", "configs/tiny/tiny_ddpmpp.py", "vpsde"),
                                       ("ncsnpp", "NCSN++", "configs/tiny/tiny_ncsnpp.py", "vesde")):
        if key in models:
            with jax.enable_x64(False):  # trained in float32, as always
                config, sde, eps, variables, score = tiny_conv_model(sde_name, 0.0, config_path=path)
                variables = train_tiny(sde, variables, score, args.train_steps)
            variables, score = to64(variables), conv_score(config, sde, "float64")
            name = f"tiny {label} {type(sde).__name__}"
            shape = (args.batch, config.data.image_size, config.data.image_size, config.data.num_channels)
            sampler_rows(name, sde, eps, score, variables, shape, tols, rows)
            data = jnp.asarray(digits("test")[: args.batch], jnp.float64)
            likelihood_rows(name, sde, score, variables, data, tols, rows)
            print(f"done {key}", flush=True)
    print_table(
        f"ODE accuracy at equal rtol = atol, float64, reference rtol = atol = {REF_TOL:g}; {machine()}",
        ["model", "quantity", "tol", "scipy err", "NFE", "s", "ours err", "NFE", "s", "÷ scipy",
         "PID before err", "NFE", "s", "÷ scipy", "ours per-sample err", "NFE", "s", "÷ scipy"], rows,
        ["err: sampler RMS |x - x_ref|; bpd |bpd - bpd_ref| mean/max over the batch (÷ scipy on the mean); "
         "z RMS |z - z_ref|.", "s: wall seconds of one call (ours: after compiling; scipy: host loop)."])


if __name__ == "__main__":
    main()
