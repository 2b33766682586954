"""Few-step probability-flow samplers: EDM's Heun sampler and DPM-Solver++ (multistep, adaptive).

Every SDE of :mod:`sde_lib` has the kernel x_t = m(t) x₀ + std(t) z. Written in the
noise-to-signal ratio σ̃ = std/m (log-SNR λ = −log σ̃) and the scaled state x̃ = x/m, each one is
the VE process x̃ = x₀ + σ̃ z, whose probability-flow ODE is dx̃/dσ̃ = (x̃ − x̂₀)/σ̃ with the data
prediction (Tweedie) x̂₀(x, t) = (x + std² s(x, t)) / m, the noise prediction ε̂ = −std · s.
:class:`SigmaSchedule` gives m, std and t as functions of σ̃ for each SDE:

- VE:     m = 1,                std = σ̃,         t = log(σ̃/σ_min) / log(σ_max/σ_min).
- VP:     std² = 1 − m²  ⇒  m = (1 + σ̃²)^(−½),     −log m = ½ log(1 + σ̃²).
- sub-VP: std = 1 − m²   ⇒  σ̃ = 1/m − m, m = 2 / (σ̃ + √(σ̃² + 4)),  −log m = asinh(σ̃/2).

Samplers are pure: ``sampler(rng, score_fn, z=None) -> (x, nfe)``, ``z`` replacing the prior
draw (otherwise τ · a prior draw, τ = ``temperature``, 1 by default); NFE counts every call of
``score_fn``. ``config.sampling.method = 'heun' | 'dpm_solver'``
selects them (keys: :func:`_heun_from_config`, :func:`_dpm_solver_from_config`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from score_sde_jax import prng, sde_lib
from score_sde_jax.sde_lib import batch_mul

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Sampler = Callable[..., tuple[Array, Array | int]]
SKIP_TYPES = ("logsnr", "time_uniform", "karras")


# --------------------------------------------------------------------------- σ̃ parametrization
@dataclasses.dataclass(frozen=True)
class SigmaSchedule:
    """m, std and t of ``sde`` as functions of σ̃ = std/m (see the module docstring). σ̃: (B,)."""

    sde: sde_lib.SDE

    def __post_init__(self):
        if not isinstance(self.sde, sde_lib.VESDE | sde_lib.VPSDE):
            raise ValueError(f"fast samplers need a VESDE, VPSDE or subVPSDE, got {type(self.sde).__name__}")

    def sigma(self, t: Array) -> Array:
        """σ̃(t) = std(t) / m(t)."""
        t = jnp.asarray(t)
        return self.sde.marginal_prob(jnp.zeros_like(t), t)[1] / self.sde.mean_coeff(t)

    def neg_log_mean_coeff(self, sigma: Array) -> Array:  # c = −log m
        if isinstance(self.sde, sde_lib.subVPSDE):
            return jnp.arcsinh(sigma / 2)
        if isinstance(self.sde, sde_lib.VPSDE):
            return 0.5 * jnp.log1p(sigma**2)
        return jnp.zeros_like(sigma)

    def mean_coeff(self, sigma: Array) -> Array:
        """m(σ̃)."""
        return jnp.exp(-self.neg_log_mean_coeff(sigma))

    def std(self, sigma: Array) -> Array:
        """std(σ̃) = σ̃ m(σ̃)."""
        return sigma * self.mean_coeff(sigma)

    def time(self, sigma: Array) -> Array:
        """t(σ̃); VP / sub-VP solve c = −log m = ¼ Δβ t² + ½ β_min t for t (Δβ = β_max − β_min)."""
        sde = self.sde
        if isinstance(sde, sde_lib.VESDE):
            return jnp.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        c = self.neg_log_mean_coeff(sigma)
        b, d = 0.5 * sde.beta_min, sde.beta_max - sde.beta_min
        return 2 * c / (b + jnp.sqrt(b**2 + d * c))


# --------------------------------------------------------------------------- conversions
# score s ↔ noise ε̂ ↔ data x̂₀ predictions at one time; mean_coeff m and std: (B,).
def score_to_noise(score: Array, std: Array) -> Array:
    return batch_mul(-std, score)  # ε̂ = −std · s


def noise_to_score(noise: Array, std: Array) -> Array:
    return batch_mul(-1.0 / std, noise)  # s = −ε̂ / std


def score_to_data(x: Array, score: Array, mean_coeff: Array, std: Array) -> Array:
    return batch_mul(1.0 / mean_coeff, x + batch_mul(std**2, score))  # Tweedie: x̂₀ = (x + std² s) / m


def data_to_score(x: Array, data: Array, mean_coeff: Array, std: Array) -> Array:
    return batch_mul(1.0 / std**2, batch_mul(mean_coeff, data) - x)  # s = (m x̂₀ − x) / std²


def data_prediction(score_fn: ScoreFn, schedule: SigmaSchedule) -> Callable[[Array, Array], Array]:
    """``x0_fn(x, σ̃) -> x̂₀``: one ``score_fn`` call at t(σ̃); x: (B, *D), σ̃: scalar or (B,)."""

    def x0_fn(x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(sigma, x.shape[:1])
        score = score_fn(x, schedule.time(sigma))
        return score_to_data(x, score, schedule.mean_coeff(sigma), schedule.std(sigma))

    return x0_fn


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> Array:
    """EDM's σ_i = (σ_max^(1/ρ) + i/(N−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i < N: shape (N,)."""
    frac = jnp.linspace(0.0, 1.0, num_steps) if num_steps > 1 else jnp.zeros((1,))
    inv = 1.0 / rho
    return (sigma_max**inv + frac * (sigma_min**inv - sigma_max**inv)) ** rho


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _prior(sde, shape, rng, z, temperature=1.0):
    """τ · (a prior draw), or the given latents ``z`` (which the temperature does not scale)."""
    _check(temperature > 0, f"temperature must be > 0, got {temperature}")
    if z is None:
        return temperature * sde.prior_sampling(rng, shape)
    if z.shape != tuple(shape):
        raise ValueError(f"z has shape {z.shape}, the sampler was built for shape {tuple(shape)}")
    return z


# --------------------------------------------------------------------------- EDM Heun
def get_heun_sampler(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    num_steps: int = 18,
    rho: float = 7.0,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    eps: float = 1e-3,
    sigma_min: float | None = None,
    temperature: float = 1.0,
) -> Sampler:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Alg. 2) on dx̃/dσ̃ = (x̃ − x̂₀)/σ̃.

    σ_0..σ_{N−1} = :func:`karras_sigmas` from σ̃(T) to ``sigma_min`` (default σ̃(ε): 0.01 for
    the default VE and VP, but 1.1e-4 for sub-VP, whose std(ε) = 1 − m² ≈ β_min ε is not
    √(1 − m²): there σ_min = 0.01 spends few steps better), σ_N = 0. Step i: with churn
    γ_i = min(S_churn/N, √2 − 1) where S_tmin ≤ σ_i ≤ S_tmax (else 0), σ̂ = σ_i (1 + γ_i),
    x̂ = x̃ + √(σ̂² − σ_i²) S_noise z; an Euler step to σ_{i+1} corrected by the trapezoid rule,
    except the last (to σ = 0), which is Euler's and returns x̂₀. NFE = 2N − 1.
    Churn can raise σ̂ above σ̃(T), i.e. t(σ̂) > T: bound it with ``s_tmax``.
    """
    _check(int(num_steps) >= 1, f"heun: num_steps must be >= 1, got {num_steps}")
    _check(rho > 0, f"heun: rho must be > 0, got {rho}")
    _check(s_churn >= 0 and s_noise >= 0, f"heun: s_churn, s_noise must be >= 0, got {s_churn}, {s_noise}")
    _check(s_tmin <= s_tmax, f"heun: s_tmin ({s_tmin}) must not exceed s_tmax ({s_tmax})")
    _check(sigma_min is None or sigma_min > 0, f"heun: sigma_min must be > 0, got {sigma_min}")
    schedule = SigmaSchedule(sde)
    num_steps = int(num_steps)

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, int]:
        x0_fn = data_prediction(sde_lib.check_score_fn(score_fn), schedule)
        sig_min = schedule.sigma(eps) if sigma_min is None else sigma_min
        sig = karras_sigmas(sig_min, schedule.sigma(sde.T), num_steps, rho)
        gamma = jnp.where((sig >= s_tmin) & (sig <= s_tmax), min(s_churn / num_steps, math.sqrt(2) - 1), 0.0)
        x = _prior(sde, shape, rng, z, temperature) / schedule.mean_coeff(sig[0])  # = dpm_solver, ode prior

        def churn(x, sigma, g, key):
            if s_churn == 0:
                return x, sigma
            sigma_hat = sigma * (1 + g)
            # √(σ̂² − σ²) = σ √(γ (2 + γ)): exactly 0 for γ = 0 (σ̂² − σ² may round below 0)
            noise = sigma * jnp.sqrt(g * (2 + g)) * s_noise * prng.normal(key, x.shape)
            return x + noise, sigma_hat

        def denoised_slope(x, sigma):  # (x̃ − D(x̃; σ̃)) / σ̃
            return (x - x0_fn(schedule.mean_coeff(sigma) * x, sigma)) / sigma

        def step(x, inputs):
            sigma, sigma_next, g, key = inputs
            x, sigma_hat = churn(x, sigma, g, key)
            d = denoised_slope(x, sigma_hat)
            x_euler = x + (sigma_next - sigma_hat) * d
            return x + (sigma_next - sigma_hat) * 0.5 * (d + denoised_slope(x_euler, sigma_next)), None

        keys = prng.split(prng.fold_in(rng, 1), num_steps)
        x, _ = jax.lax.scan(step, x, (sig[:-1], sig[1:], gamma[:-1], keys[:-1]))
        x, sigma_hat = churn(x, sig[-1], gamma[-1], keys[-1])
        return x0_fn(schedule.mean_coeff(sigma_hat) * x, sigma_hat), 2 * num_steps - 1

    return sampler


# --------------------------------------------------------------------------- DPM-Solver++
def sigma_grid(schedule: SigmaSchedule, num_steps: int, skip_type: str, eps: float,
               rho: float = 7.0) -> Array:
    """num_steps + 1 decreasing σ̃ from σ̃(T) to σ̃(ε): uniform in λ (``logsnr``), in t
    (``time_uniform``) or EDM's ρ-schedule (``karras``)."""
    sig_max, sig_min = schedule.sigma(schedule.sde.T), schedule.sigma(eps)
    if skip_type == "logsnr":
        return jnp.exp(jnp.linspace(jnp.log(sig_max), jnp.log(sig_min), num_steps + 1))
    if skip_type == "time_uniform":
        return schedule.sigma(jnp.linspace(schedule.sde.T, eps, num_steps + 1))
    return karras_sigmas(sig_min, sig_max, num_steps + 1, rho)


def _phis(h: Array) -> tuple[Array, Array, Array]:
    """φ₁ = e^{−h} − 1, φ₂ = φ₁/h + 1, φ₃ = φ₂/h − ½: x(λ_t) = (std_t/std_s) x − α_t φ₁ x̂₀
    + α_t h φ₂ x̂₀' − α_t h² φ₃ x̂₀'' + O(h⁴) (derivatives in λ, h = λ_t − λ_s)."""
    phi1 = jnp.expm1(-h)
    phi2 = phi1 / h + 1.0
    return phi1, phi2, phi2 / h - 0.5


def _first_order(schedule, x, sig_s, sig_t, x0):
    """DPM-Solver++(1) (DDIM): x_t = (std_t/std_s) x − α_t (e^{−h} − 1) x̂₀(x_s)."""
    h = jnp.log(sig_s) - jnp.log(sig_t)
    return schedule.std(sig_t) / schedule.std(sig_s) * x - schedule.mean_coeff(sig_t) * jnp.expm1(-h) * x0


def _multistep_update(schedule, x, sig, i, x0s, order):
    """DPM-Solver++ step i (σ̃ grid ``sig``) of ``order`` from x̂₀ at points i, i−1, i−2 (``x0s``)."""
    lam = -jnp.log(sig)
    h = lam[i + 1] - lam[i]
    base = _first_order(schedule, x, sig[i], sig[i + 1], x0s[0])
    if order == 1:
        return base
    alpha_t = schedule.mean_coeff(sig[i + 1])
    phi1, phi2, phi3 = _phis(h)
    r0 = (lam[i] - lam[jnp.maximum(i - 1, 0)]) / h
    d1_0 = (x0s[0] - x0s[1]) / r0  # ≈ h x̂₀' at λ_i − h r0 / 2
    if order == 2:  # DPM-Solver++(2M): x̂₀ → (1 + 1/(2r)) x̂₀_i − 1/(2r) x̂₀_{i−1}
        return base - 0.5 * alpha_t * phi1 * d1_0
    r1 = (lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)]) / h
    d1_1 = (x0s[1] - x0s[2]) / r1
    d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)  # ≈ h² x̂₀''
    d1 = d1_0 + 0.5 * r0 * d2  # ≈ h x̂₀' at λ_i
    return base + alpha_t * (phi2 * d1 - phi3 * d2)


def get_dpm_solver_sampler(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    num_steps: int = 20,
    order: int = 2,
    skip_type: str = "logsnr",
    lower_order_final: bool = True,
    denoise: bool = False,
    eps: float = 1e-3,
    rho: float = 7.0,
    temperature: float = 1.0,
) -> Sampler:
    """DPM-Solver++ (Lu et al. 2022), multistep, on data prediction x̂₀ in log-SNR time λ.

    Exact solution from λ_s to λ_t: x_t = (std_t/std_s) x_s + std_t ∫ e^λ x̂₀(λ) dλ; order k
    expands x̂₀ in λ with divided differences of the last k x̂₀ values (k = 1: DDIM;
    2: DPM-Solver++(2M); 3: 3M). The first steps use the orders that history allows; with
    ``lower_order_final`` and fewer than 15 steps, step i uses at most order num_steps − i.
    One NFE per step, plus one if ``denoise`` returns x̂₀ at ε.
    """
    _check(int(num_steps) >= 1, f"dpm_solver: num_steps must be >= 1, got {num_steps}")
    _check(order in (1, 2, 3), f"dpm_solver: order must be 1, 2 or 3, got {order!r}")
    _check(skip_type in SKIP_TYPES, f"dpm_solver: unknown skip_type {skip_type!r}; valid: {list(SKIP_TYPES)}")
    schedule = SigmaSchedule(sde)
    num_steps = int(num_steps)
    orders = np.minimum(order, np.arange(num_steps) + 1)
    if lower_order_final and num_steps < 15:
        orders = np.minimum(orders, num_steps - np.arange(num_steps))
    branches = [lambda *a, k=k: _multistep_update(schedule, *a, k) for k in (1, 2, 3)]

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, int]:
        x0_fn = data_prediction(sde_lib.check_score_fn(score_fn), schedule)
        sig = sigma_grid(schedule, num_steps, skip_type, eps, rho)
        x = _prior(sde, shape, rng, z, temperature)

        def step(carry, inputs):
            x, x0_prev, x0_prev2 = carry
            i, k = inputs
            x0 = x0_fn(x, sig[i])
            return (jax.lax.switch(k - 1, branches, x, sig, i, (x0, x0_prev, x0_prev2)), x0, x0_prev), None

        zeros = jnp.zeros_like(x)
        (x, _, _), _ = jax.lax.scan(step, (x, zeros, zeros), (jnp.arange(num_steps), jnp.asarray(orders)))
        if denoise:
            return x0_fn(x, sig[-1]), num_steps + 1
        return x, num_steps

    return sampler


def _singlestep_pair(schedule, x0_fn, x, sig_s, sig_t, x0_s, order):
    """(lower, higher) order solutions of one singlestep DPM-Solver++ step s → t sharing x̂₀(x_s):
    order 2: DPM-Solver++(1) and (2S) with r₁ = ½; order 3: (2S) with r₁ = ⅓ and (3S) with
    r₁, r₂ = ⅓, ⅔. Makes order − 1 calls of ``x0_fn``."""
    lam_s, lam_t = -jnp.log(sig_s), -jnp.log(sig_t)
    h = lam_t - lam_s
    alpha_t = schedule.mean_coeff(sig_t)
    phi1, phi2, _ = _phis(h)
    first = _first_order(schedule, x, sig_s, sig_t, x0_s)
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    sig_1 = jnp.exp(-(lam_s + r1 * h))
    x0_1 = x0_fn(_first_order(schedule, x, sig_s, sig_1, x0_s), sig_1)
    second = first - 0.5 / r1 * alpha_t * phi1 * (x0_1 - x0_s)
    if order == 2:
        return first, second
    r2 = 2.0 / 3.0
    sig_2 = jnp.exp(-(lam_s + r2 * h))
    _, phi2_r2, _ = _phis(r2 * h)
    x_2 = _first_order(schedule, x, sig_s, sig_2, x0_s) + (
        r2 / r1 * schedule.mean_coeff(sig_2) * phi2_r2 * (x0_1 - x0_s))
    x0_2 = x0_fn(x_2, sig_2)
    return second, first + alpha_t * phi2 / r2 * (x0_2 - x0_s)


def get_adaptive_dpm_solver_sampler(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    order: int = 2,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    theta: float = 0.9,
    denoise: bool = False,
    eps: float = 1e-3,
    max_steps: int = 1000,
    temperature: float = 1.0,
) -> Sampler:
    """Adaptive-step DPM-Solver++ (Lu et al. 2022, DPM-Solver-12 / -23) in λ.

    Each attempt from λ_s takes h = min(h, λ_ε − λ_s) and computes an embedded pair
    (:func:`_singlestep_pair`). With δ = max(atol, rtol · max(|x_lower|, |x_prev|)) elementwise,
    E = max over the batch of the RMS over D of (x_higher − x_lower)/δ; the step is accepted if
    E ≤ 1, and h ← θ h E^(−1/order). x̂₀(x_s) is kept across rejected attempts, so
    NFE = (accepted steps) + (order − 1) · (attempts) (+1 with ``denoise``), returned as an array.
    More than ``max_steps`` attempts raise an error at run time.
    """
    _check(order in (2, 3), f"dpm_solver adaptive: order must be 2 or 3, got {order!r}")
    _check(rtol > 0 and atol > 0, f"dpm_solver adaptive: rtol, atol must be > 0, got {rtol}, {atol}")
    _check(h_init > 0 and 0 < theta <= 1, f"dpm_solver adaptive: need h_init > 0, 0 < theta <= 1, "
                                          f"got {h_init}, {theta}")
    schedule = SigmaSchedule(sde)

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, Array]:
        x0_fn = data_prediction(sde_lib.check_score_fn(score_fn), schedule)
        x = _prior(sde, shape, rng, z, temperature)
        lam_end = -jnp.log(schedule.sigma(eps))
        lam_start = -jnp.log(schedule.sigma(sde.T)).astype(x.dtype)

        def cond(c):
            return (c["lam"] < lam_end) & (c["attempts"] < max_steps)

        def body(c):
            x, lam = c["x"], c["lam"]
            x0 = jax.lax.cond(c["have_x0"], lambda: c["x0"], lambda: x0_fn(x, jnp.exp(-lam)))
            lam_t = jnp.where(lam + c["h"] >= lam_end - 1e-5, lam_end, lam + c["h"])
            lower, higher = _singlestep_pair(schedule, x0_fn, x, jnp.exp(-lam), jnp.exp(-lam_t), x0, order)
            delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(lower), jnp.abs(c["x_prev"])))
            err = ((higher - lower) / delta).reshape(x.shape[0], -1)
            e = jnp.max(jnp.sqrt(jnp.mean(err**2, axis=-1)))
            ok = e <= 1.0
            lam_new = jnp.where(ok, lam_t, lam)
            return {
                "x": jnp.where(ok, higher, x), "x_prev": jnp.where(ok, lower, c["x_prev"]),
                "x0": x0, "have_x0": ~ok, "lam": lam_new,
                "h": jnp.minimum(theta * c["h"] * e ** (-1.0 / order), lam_end - lam_new),
                "nfe": c["nfe"] + jnp.where(c["have_x0"], 0, 1) + order - 1,
                "attempts": c["attempts"] + 1,
            }

        init = {"x": x, "x_prev": x, "x0": jnp.zeros_like(x), "have_x0": jnp.asarray(False), "lam": lam_start,
                "h": jnp.asarray(h_init, x.dtype), "nfe": jnp.asarray(0), "attempts": jnp.asarray(0)}
        c = jax.lax.while_loop(cond, body, init)
        x = eqx.error_if(c["x"], c["lam"] < lam_end,
                         f"dpm_solver adaptive: not at t = eps after max_steps={max_steps} attempts; "
                         "raise max_steps or rtol/atol")
        if denoise:
            return x0_fn(x, jnp.exp(-lam_end)), c["nfe"] + 1
        return x, c["nfe"]

    return sampler


# --------------------------------------------------------------------------- from a config
def heun_from_config(config, sde, shape, eps):
    """config.sampling.{num_steps (18), rho (7), s_churn (0), s_tmin (0), s_tmax (inf), s_noise (1),
    sigma_min (None or 0: σ̃(eps))}."""
    s = config.sampling
    return get_heun_sampler(sde, shape, s.get("num_steps", 18), s.get("rho", 7.0), s.get("s_churn", 0.0),
                            s.get("s_tmin", 0.0), s.get("s_tmax", float("inf")), s.get("s_noise", 1.0), eps,
                            s.get("sigma_min", None) or None, s.get("temperature", 1.0))


def dpm_solver_from_config(config, sde, shape, eps):
    """config.sampling.{num_steps (20), order (2), skip_type ('logsnr'), lower_order_final (True),
    noise_removal (False), adaptive (False), adaptive_rtol (0.05), adaptive_atol (0.0078)}.

    The adaptive tolerances have their own keys: ``rtol``/``atol`` hold the ODE sampler's 1e-5.
    """
    s = config.sampling
    denoise = bool(s.get("noise_removal", False))
    if s.get("adaptive", False):
        return get_adaptive_dpm_solver_sampler(sde, shape, s.get("order", 2), s.get("adaptive_rtol", 0.05),
                                               s.get("adaptive_atol", 0.0078), denoise=denoise, eps=eps,
                                               temperature=s.get("temperature", 1.0))
    return get_dpm_solver_sampler(sde, shape, s.get("num_steps", 20), s.get("order", 2),
                                  str(s.get("skip_type", "logsnr")).lower(),
                                  s.get("lower_order_final", True), denoise, eps, s.get("rho", 7.0),
                                  s.get("temperature", 1.0))
