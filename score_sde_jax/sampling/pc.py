"""Predictor–corrector samplers (SPEC §4) in one ``lax.scan``.

A predictor or corrector is a small pure function

    update(rng, x, t, score_fn, sde, rsde) -> (x, x_mean)        x: (B, *D), t: (B,)

plugged into :func:`pc_loop`, the one scan over the time grid t_i = linspace(T, ε, N).
Controllable generation extends the same loop through its ``project`` hook. Samplers are pure
and traceable: ``sampler(rng, score_fn) -> (x, nfe)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde_jax import prng, sde_lib
from score_sde_jax.sde_lib import batch_mul, step_index

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Update = Callable[..., tuple[Array, Array]]
ProjectFn = Callable[[Array, Array, Array, Array], tuple[Array, Array]]


# --------------------------------------------------------------------------- predictors
def euler_maruyama(rng, x, t, score_fn, sde, rsde):
    """Δt = −T/N; x_mean = x + f̄ Δt; x = x_mean + ḡ √(−Δt) z."""
    dt = -sde.T / sde.N
    drift, diffusion = rsde.sde(x, t)
    x_mean = x + drift * dt
    return x_mean + batch_mul(diffusion * jnp.sqrt(-dt), prng.normal(rng, x.shape)), x_mean


def reverse_diffusion(rng, x, t, score_fn, sde, rsde):
    """x_mean = x − f̄_i; x = x_mean + Ḡ_i z (the discretized reverse SDE)."""
    f, G = rsde.discretize(x, t)
    x_mean = x - f
    return x_mean + batch_mul(G, prng.normal(rng, x.shape)), x_mean


def ancestral_sampling(rng, x, t, score_fn, sde, rsde):
    """Ancestral sampling of the discrete chain.

    VE: x_mean = x + s (σ_i² − σ_{i−1}²), noise std √(σ_{i−1}² (σ_i² − σ_{i−1}²) / σ_i²).
    VP: x_mean = (x + β_i s) / √(1 − β_i), noise std √β_i.
    sub-VP (no discrete chain): the Gaussian posterior q(x_s | x_t, x̂₀) of the forward kernel
    between t and s = t − T/N, with Tweedie's x̂₀ = (x + std_t² s) / m_t.
    """
    z = prng.normal(rng, x.shape)
    score = score_fn(x, t)
    if isinstance(sde, sde_lib.subVPSDE):
        s = jnp.maximum(t - sde.T / sde.N, 0.0)
        m_t, m_s = sde.mean_coeff(t), sde.mean_coeff(s)
        var_t = sde.marginal_prob(x, t)[1] ** 2
        var_s = sde.marginal_prob(x, s)[1] ** 2
        var_ts = var_t - (m_t / m_s) ** 2 * var_s  # Var(x_t | x_s)
        x0 = batch_mul(1.0 / m_t, x + batch_mul(var_t, score))
        x_mean = batch_mul((m_t / m_s) * var_s / var_t, x) + batch_mul(m_s * var_ts / var_t, x0)
        return x_mean + batch_mul(jnp.sqrt(var_s * var_ts / var_t), z), x_mean
    i = step_index(t, sde.N, sde.T)
    if isinstance(sde, sde_lib.VESDE):
        sigma = sde.discrete_sigmas[i]
        adjacent = jnp.where(i == 0, 0.0, sde.discrete_sigmas[jnp.maximum(i - 1, 0)])
        step = sde.discrete_sigma_steps[i]  # √(σ_i² − σ_{i−1}²), without cancellation
        x_mean = x + batch_mul(step**2, score)
        std = adjacent * step / sigma
        return x_mean + batch_mul(std, z), x_mean
    beta = sde.discrete_betas[i]
    x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
    return x_mean + batch_mul(jnp.sqrt(beta), z), x_mean


def no_update(rng, x, t, score_fn, sde, rsde, **unused):
    """The identity: a PC sampler with predictor or corrector ``none``."""
    return x, x


PREDICTORS: dict[str, Update] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral_sampling": ancestral_sampling,
    "none": no_update,
}


# --------------------------------------------------------------------------- correctors
def langevin_alpha(sde: sde_lib.SDE, t: Array) -> Array:
    """α_i of the DDPM table for VP / sub-VP, 1 for VE; t: (B,) -> (B,). The factor of every
    Langevin step size (SPEC: ε = 2 α (r ‖z‖ / ‖s‖)²)."""
    if isinstance(sde, sde_lib.VPSDE):
        return sde.alphas[step_index(t, sde.N, sde.T)]
    return jnp.ones_like(t)


def langevin_steps(rng: Array, x: Array, t: Array, score_fn: ScoreFn, n_steps: int,
                   step_size_fn: Callable[[Array, Array], Array]) -> tuple[Array, Array]:
    """``n_steps`` Langevin steps at fixed t (B,): x_mean = x + ε s(x, t), x = x_mean + √(2ε) z.

    ``step_size_fn(s, z) -> ε`` (scalar or (B,)) from the score and the noise of the step: the
    hook every corrector (and the inpainter's) plugs its step-size rule into. Returns (x, x_mean)."""

    def body(_, carry):
        rng, x, _ = carry
        rng, step_rng = prng.split(rng)
        grad = score_fn(x, t)
        z = prng.normal(step_rng, x.shape)
        eps = step_size_fn(grad, z)
        x_mean = x + batch_mul(eps, grad)
        return rng, x_mean + batch_mul(jnp.sqrt(2.0 * eps), z), x_mean

    _, x, x_mean = jax.lax.fori_loop(0, n_steps, body, (rng, x, x))
    return x, x_mean


def langevin(rng, x, t, score_fn, sde, rsde, snr: float, n_steps: int):
    """ε = 2 α (snr ‖z‖ / ‖s‖)², norms per sample over D, averaged over the batch."""
    alpha = langevin_alpha(sde, t)

    def step_size(grad, z):
        def norm(a):
            return jnp.mean(jnp.linalg.norm(a.reshape(a.shape[0], -1), axis=-1))

        return 2.0 * alpha * (snr * norm(z) / norm(grad)) ** 2

    return langevin_steps(rng, x, t, score_fn, n_steps, step_size)


def annealed_langevin_dynamics(rng, x, t, score_fn, sde, rsde, snr: float, n_steps: int):
    """NCSN's annealed Langevin dynamics: ε = 2 α (snr · std(t))²."""
    alpha = langevin_alpha(sde, t)
    std = sde.marginal_prob(x, t)[1]
    return langevin_steps(
        rng, x, t, score_fn, n_steps, lambda grad, z: 2.0 * alpha * (snr * std) ** 2
    )


CORRECTORS: dict[str, Update] = {
    "langevin": langevin,
    "ald": annealed_langevin_dynamics,
    "none": no_update,
}


def _lookup(table: dict, name: str, kind: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {sorted(table)}")
    return table[name]


def _identity_project(rng, x, x_mean, t):
    return x, x_mean


# --------------------------------------------------------------------------- the one loop
def pc_loop(
    rng: Array,
    x: Array,
    score_fn: ScoreFn,
    sde: sde_lib.SDE,
    predictor: Update,
    corrector: Update,
    eps: float,
    project: ProjectFn = _identity_project,
) -> tuple[Array, Array]:
    """Run corrector then predictor at each t_i = linspace(T, ε, N) in one ``lax.scan``.

    ``project(rng, x, x_mean, t) -> (x, x_mean)`` is applied after every corrector and
    predictor update (identity for unconditional sampling; inpainting replaces known pixels).
    Returns ``(x, x_mean)`` of the last step, each (B, *D).
    """
    score_fn = sde_lib.check_score_fn(score_fn)
    rsde = sde.reverse(score_fn, probability_flow=False)
    timesteps = jnp.linspace(sde.T, eps, sde.N)

    def step(carry, t):
        rng, x, _ = carry
        rng, rc, rpc, rp, rpp = prng.split(rng, 5)
        vec_t = jnp.full((x.shape[0],), t)
        x, x_mean = corrector(rc, x, vec_t, score_fn, sde, rsde)
        x, x_mean = project(rpc, x, x_mean, vec_t)
        x, x_mean = predictor(rp, x, vec_t, score_fn, sde, rsde)
        x, x_mean = project(rpp, x, x_mean, vec_t)
        return (rng, x, x_mean), None

    (_, x, x_mean), _ = jax.lax.scan(step, (rng, x, x), timesteps)
    return x, x_mean


def get_pc_sampler(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_steps: int = 1,
    probability_flow: bool = False,
    eps: float = 1e-3,
    denoise: bool = True,
) -> Callable[[Array, ScoreFn], tuple[Array, int]]:
    """The predictor–corrector sampler: ``sampler(rng, score_fn) -> (x (shape), nfe)``.

    ``probability_flow`` makes the predictor follow the PF-ODE (no noise). ``denoise``
    returns the noise-free mean of the last step. NFE = N (p + c · n_steps) with p, c = 1
    where the predictor / corrector is not ``none``.
    """
    pred, corr = predictor_corrector_fns(predictor, corrector, snr, n_steps, probability_flow)
    nfe = sde.N * ((predictor != "none") + (corrector != "none") * n_steps)

    def sampler(rng: Array, score_fn: ScoreFn) -> tuple[Array, int]:
        rng, prior_rng = prng.split(rng)
        x = sde.prior_sampling(prior_rng, shape)
        x, x_mean = pc_loop(rng, x, score_fn, sde, pred, corr, eps)
        return (x_mean if denoise else x), nfe

    return sampler


def predictor_corrector_fns(
    predictor: str, corrector: str, snr: float, n_steps: int, probability_flow: bool = False
) -> tuple[Update, Update]:
    """The update functions named ``predictor`` and ``corrector``, configured for ``pc_loop``."""
    pred = _lookup(PREDICTORS, predictor, "predictor")
    corr = functools.partial(_lookup(CORRECTORS, corrector, "corrector"), snr=snr, n_steps=n_steps)
    if probability_flow:
        if predictor not in ("euler_maruyama", "reverse_diffusion", "none"):
            raise ValueError(f"probability_flow needs predictor euler_maruyama or "
                             f"reverse_diffusion, got {predictor!r}")

        def pf_pred(rng, x, t, score_fn, sde, rsde):
            return pred(rng, x, t, score_fn, sde, sde.reverse(score_fn, probability_flow=True))

        return pf_pred, corr
    return pred, corr
