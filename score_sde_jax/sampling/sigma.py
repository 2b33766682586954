"""The σ̃ parametrization of every SDE, shared by the few-step probability-flow samplers.

Every SDE of :mod:`sde_lib` has the kernel x_t = m(t) x₀ + std(t) z. Written in the
noise-to-signal ratio σ̃ = std/m (log-SNR λ = −log σ̃) and the scaled state x̃ = x/m, each one is
the VE process x̃ = x₀ + σ̃ z, whose probability-flow ODE is dx̃/dσ̃ = (x̃ − x̂₀)/σ̃ with the data
prediction (Tweedie) x̂₀(x, t) = (x + std² s(x, t)) / m, the noise prediction ε̂ = −std · s.
:class:`SigmaSchedule` gives m, std and t as functions of σ̃ for each SDE:

- VE:     m = 1,                std = σ̃,         t = log(σ̃/σ_min) / log(σ_max/σ_min).
- VP:     std² = 1 − m²  ⇒  m = (1 + σ̃²)^(−½),     −log m = ½ log(1 + σ̃²).
- sub-VP: std = 1 − m²   ⇒  σ̃ = 1/m − m, m = 2 / (σ̃ + √(σ̃² + 4)),  −log m = asinh(σ̃/2).

The few-step samplers (:mod:`.edm`, :mod:`.dpm_solver`) are written in σ̃. They are pure:
``sampler(rng, score_fn, z=None) -> (x, nfe)``, ``z`` replacing the prior draw (otherwise τ · a
prior draw, τ = ``temperature``, 1 by default); NFE counts every call of ``score_fn``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde_jax import sde_lib
from score_sde_jax.sde_lib import batch_mul

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
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


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def prior(sde, shape, rng, z, temperature=1.0):
    """τ · (a prior draw), or the given latents ``z`` (which the temperature does not scale)."""
    check(temperature > 0, f"temperature must be > 0, got {temperature}")
    if z is None:
        return temperature * sde.prior_sampling(rng, shape)
    if z.shape != tuple(shape):
        raise ValueError(f"z has shape {z.shape}, the sampler was built for shape {tuple(shape)}")
    return z


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
