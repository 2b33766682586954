"""Samplers (SPEC §4): predictor–corrector in one ``lax.scan`` and the probability-flow ODE, and
the ODE as an encoder x ↦ z with latent interpolation (paper §4.3).

A predictor or corrector is a small pure function

    update(rng, x, t, score_fn, sde, rsde) -> (x, x_mean)        x: (B, *D), t: (B,)

plugged into :func:`pc_loop`, the one scan over the time grid t_i = linspace(T, ε, N).
Controllable generation extends the same loop through its ``project`` hook.

Samplers are pure and traceable: ``sampler(rng, score_fn) -> (x, nfe)``. Wrap the call in
``jax.jit`` with the network parameters as arguments (not closed over) for speed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde_jax import fast_sampling, prng, sde_lib
from score_sde_jax.interpolation import INTERPOLATIONS, lerp, slerp  # noqa: F401 (the encoder's API)
from score_sde_jax.sde_lib import batch_mul, step_index
from score_sde_jax.step_control import DEFAULT_SOLVER, check_solver, solve_ode

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


# --------------------------------------------------------------------------- the ODE sampler
def _pf_vector_field(sde: sde_lib.SDE, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
    """``vf(t, x) = f(x, t) − ½ g(t)² s(x, t)``, the probability-flow drift of a batch x (B, *D)
    at a scalar time t, in diffrax's argument order."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def vf(t, x):
        return rsde.sde(x, jnp.full((x.shape[0],), t))[0]

    return vf


def get_ode_sampler(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = DEFAULT_SOLVER,
    eps: float = 1e-3,
    denoise: bool = False,
    max_steps: int = 4096,
    temperature: float = 1.0,
) -> Callable[..., tuple[Array, Array]]:
    """Probability-flow ODE sampler: dx/dt = f − ½ g² s(x, t) from T to ε with diffrax.

    ``sampler(rng, score_fn, z=None) -> (x, nfe)``; ``z`` (shape) replaces the prior draw, which
    is otherwise τ · (a draw of the prior p_T), τ = ``temperature`` (τ < 1: "cooler" samples).
    Given z, this decodes the latents of :func:`get_ode_encoder` (keep ``denoise`` off).
    The whole batch is one ODE state (one step size), as in the official sampler. ``denoise``
    adds one reverse-diffusion step at ε without noise (one more NFE).
    """
    check_solver(solver)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, Array]:
        score_fn = sde_lib.check_score_fn(score_fn)
        x = temperature * sde.prior_sampling(rng, shape) if z is None else z
        x, nfe = solve_ode(_pf_vector_field(sde, score_fn), x, sde.T, eps, rtol, atol, solver,
                           max_steps)
        if denoise:
            _, x = reverse_diffusion(rng, x, jnp.full((shape[0],), eps), score_fn, sde,
                                     sde.reverse(score_fn, probability_flow=False))
            nfe = nfe + 1
        return x, nfe

    return sampler


# --------------------------------------------------------------------------- the ODE encoder
def get_ode_encoder(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = DEFAULT_SOLVER,
    eps: float = 1e-3,
    max_steps: int = 4096,
) -> Callable[[ScoreFn, Array], tuple[Array, Array]]:
    """The probability-flow ODE as an encoder (paper §4.3): ``encode(score_fn, x) -> (z, nfe)``.

    Integrates dx/dt = f(x, t) − ½ g(t)² s(x, t) from t = ε to T: x (shape (B, *D), at time ε,
    in model space) ↦ its latent z = x(T) (shape), ``nfe`` (B,) the score evaluations of each
    solve. The map is deterministic and invertible, fixed by the score and the SDE; decoding
    is the ODE sampler started from z, ``get_ode_sampler(sde, shape, rtol, atol, solver,
    eps)(rng, score_fn, z=z)`` (same ε, no ``denoise``), and returns x to solver tolerance.

    Each sample is its own solve (``vmap``, as the likelihood with ``per_sample=True``), not
    one state for the batch as in the sampler: an adaptive step size shared by the batch would
    make an image's latent depend, at the tolerance, on the images beside it, and the encoding
    would not be unique to the image. Per sample, z[i] is a function of x[i] alone (the latent
    the per-sample likelihood returns for it, to tolerance) and its NFE is its own.
    """
    check_solver(solver)
    shape = tuple(shape)

    def encode(score_fn: ScoreFn, x: Array) -> tuple[Array, Array]:
        if tuple(x.shape) != shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, the encoder was built for shape {shape}")
        vf = _pf_vector_field(sde, sde_lib.check_score_fn(score_fn))

        def one(xi: Array) -> tuple[Array, Array]:
            z, nfe = solve_ode(vf, xi[None], eps, sde.T, rtol, atol, solver, max_steps)
            return z[0], nfe

        return jax.vmap(one)(x)

    return encode


# --------------------------------------------------------------------------- from a config
SAMPLING_METHODS: dict[str, Callable] = {}


def register_sampling_method(name: str):
    """Decorator: ``fn(config, sde, shape, eps) -> sampler`` becomes ``config.sampling.method``."""

    def _register(fn):
        SAMPLING_METHODS[name] = fn
        return fn

    return _register


def pc_settings(config) -> dict:
    """``get_pc_sampler``'s keyword arguments from ``config.sampling`` (predictor, corrector,
    snr, n_steps_each, probability_flow, noise_removal); the PC inpainter, colorizer and
    conditional sampler take the same."""
    s = config.sampling
    return dict(predictor=s.get("predictor", "reverse_diffusion"), corrector=s.get("corrector", "langevin"),
                snr=s.snr, n_steps=s.n_steps_each, probability_flow=s.get("probability_flow", False),
                denoise=s.get("noise_removal", True))


def ode_settings(config) -> dict:
    """``get_ode_sampler``'s rtol, atol and solver from ``config.sampling``."""
    s = config.sampling
    return dict(rtol=s.get("rtol", 1e-5), atol=s.get("atol", 1e-5), solver=s.get("solver", DEFAULT_SOLVER))


@register_sampling_method("pc")
def _pc_from_config(config, sde, shape, eps):
    temperature = config.sampling.get("temperature", 1.0)
    if temperature != 1.0:
        raise ValueError(f"config.sampling.temperature={temperature} scales the prior draw of the "
                         "ode, heun and dpm_solver samplers; the pc sampler has none to scale "
                         "(set config.sampling.method or temperature=1)")
    return get_pc_sampler(sde, shape, eps=eps, **pc_settings(config))


@register_sampling_method("ode")
def _ode_from_config(config, sde, shape, eps):
    return get_ode_sampler(sde, shape, eps=eps, denoise=config.sampling.get("noise_removal", False),
                           temperature=config.sampling.get("temperature", 1.0), **ode_settings(config))


register_sampling_method("heun")(fast_sampling.heun_from_config)
register_sampling_method("dpm_solver")(fast_sampling.dpm_solver_from_config)


def get_sampling_fn(config, sde: sde_lib.SDE, shape: tuple[int, ...], eps: float):
    """The sampler named by ``config.sampling.method`` (``pc``, ``ode``, ``heun``, ``dpm_solver``)."""
    method = str(config.sampling.method).lower()
    return _lookup(SAMPLING_METHODS, method, "sampling method")(config, sde, shape, eps)
