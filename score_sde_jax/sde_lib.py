"""Forward SDEs dx = f(x, t) dt + g(t) dw and their time reversals (SPEC §1).

Every SDE here is linear in x, so its perturbation kernel is Gaussian:
``x(t) | x(0) ~ N(mean_coeff(t) x(0), std(t)^2 I)``, given by :meth:`SDE.marginal_prob`.

Shapes: ``x`` is ``(B, *data_shape)``, ``t`` is ``(B,)``. Drifts have ``x``'s shape, diffusions
are ``(B,)``; use :func:`batch_mul` to broadcast a ``(B,)`` array over ``x``.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde_jax import prng

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_mul(a: Array, x: Array) -> Array:
    """``a[b] * x[b, ...]`` for ``a`` of shape (B,) and ``x`` of shape (B, ...)."""
    return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim)) * x


def step_index(t: Array, N: int, T: float) -> Array:
    """Discrete step ``i = floor(t (N-1) / T)`` (truncation, as the official code does)."""
    return (t * (N - 1) / T).astype(jnp.int32)


class SDE(abc.ABC):
    """A forward SDE on [0, T] with an N-step discretization."""

    def __init__(self, N: int):
        if int(N) < 1:
            raise ValueError(f"SDE needs N >= 1 discretization steps, got N={N}")
        self.N = int(N)

    @property
    def T(self) -> float:
        return 1.0

    @abc.abstractmethod
    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift f(x, t) (x's shape) and diffusion g(t) (shape (B,))."""

    @abc.abstractmethod
    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean (x's shape) and std (shape (B,)) of p_{0t}(x(t) | x(0) = x)."""

    @abc.abstractmethod
    def prior_sampling(self, rng: Array, shape: tuple[int, ...]) -> Array:
        """A sample of shape ``shape`` from the prior p_T."""

    @abc.abstractmethod
    def prior_logp(self, z: Array) -> Array:
        """log p_T(z), summed over all non-batch axes: shape (B,)."""

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """One step x_{i+1} = x_i + f_i + G_i z of the discretized SDE.

        Default: Euler–Maruyama with Δt = T/N, f_i = f(x, t) Δt and G_i = g(t) √Δt.
        """
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * jnp.sqrt(dt)

    def mean_coeff(self, t: Array) -> Array:
        """The factor m(t) in mean = m(t) x(0), shape (B,)."""
        return self.marginal_prob(jnp.ones_like(t), t)[0]

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or, with ``probability_flow``, the probability-flow ODE)."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """dx = [f − g² s(x, t)] dt + g dw̄ (reverse SDE) or dx/dt = f − ½ g² s(x, t) (PF-ODE)."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N
        self.T = forward.T

    def _reverse(self, f: Array, g: Array, x: Array, t: Array) -> tuple[Array, Array]:
        score = self.score_fn(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - batch_mul(g**2, score) * weight
        rev_g = jnp.zeros_like(g) if self.probability_flow else g
        return rev_f, rev_g

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Reverse drift f − g² s (× ½ for the ODE) and diffusion g (0 for the ODE)."""
        return self._reverse(*self.forward.sde(x, t), x, t)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """f̄_i = f_i − G_i² s(x, t) (× ½ for the ODE), Ḡ_i = G_i (0 for the ODE)."""
        return self._reverse(*self.forward.discretize(x, t), x, t)


def _gaussian_logp(z: Array, var: float) -> Array:
    axes = tuple(range(1, z.ndim))
    d = np.prod(z.shape[1:])
    return -0.5 * d * jnp.log(2 * np.pi * var) - jnp.sum(z**2, axis=axes) / (2 * var)


class VESDE(SDE):
    """Variance exploding SDE (SMLD): σ(t) = σ_min (σ_max/σ_min)^t, f = 0,
    g(t) = σ(t) √(2 log(σ_max/σ_min)); marginal N(x(0), σ(t)² I); prior N(0, σ_max² I)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        # tables computed in float64, then stored in JAX's default precision
        sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), N))
        self.discrete_sigmas = jnp.asarray(sigmas)
        # G_i = √(σ_i² − σ_{i−1}²) = σ_i √(−expm1(2 log(σ_{i−1}/σ_i))) (no cancellation), G_0 = σ_0
        steps = sigmas.copy()
        steps[1:] *= np.sqrt(-np.expm1(2.0 * np.diff(-np.log(sigmas))))
        self.discrete_sigma_steps = jnp.asarray(steps)

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        diffusion = self.sigma(t) * np.sqrt(2 * np.log(self.sigma_max / self.sigma_min))
        return jnp.zeros_like(x), diffusion

    def marginal_prob(self, x, t):
        return x, self.sigma(t)

    def prior_sampling(self, rng, shape):
        return prng.normal(rng, shape) * self.sigma_max

    def prior_logp(self, z):
        return _gaussian_logp(z, self.sigma_max**2)

    def discretize(self, x, t):
        """SMLD: f_i = 0, G_i = √(σ_i² − σ_{i−1}²) with σ_{−1} = 0."""
        i = step_index(t, self.N, self.T)
        return jnp.zeros_like(x), self.discrete_sigma_steps[i]


class VPSDE(SDE):
    """Variance preserving SDE (DDPM): β(t) = β_min + t (β_max − β_min), f = −½ β(t) x,
    g = √β(t); prior N(0, I)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        # tables computed in float64 (1 − ᾱ and √α − 1 through expm1 / log1p), then stored in
        # JAX's default precision
        # (β_i > 1 when N < β_max: the discrete chain does not exist, its tables are NaN)
        betas = np.linspace(beta_min / N, beta_max / N, N)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_alphas = np.log1p(-betas)
        log_alphas_cumprod = np.cumsum(log_alphas)
        self.discrete_betas = jnp.asarray(betas)
        self.alphas = jnp.asarray(1.0 - betas)
        self.sqrt_alphas_m1 = jnp.asarray(np.expm1(0.5 * log_alphas))  # √α_i − 1
        self.alphas_cumprod = jnp.asarray(np.exp(log_alphas_cumprod))
        self.sqrt_alphas_cumprod = jnp.asarray(np.exp(0.5 * log_alphas_cumprod))
        self.sqrt_1m_alphas_cumprod = jnp.asarray(np.sqrt(-np.expm1(log_alphas_cumprod)))

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Array) -> Array:
        """−¼ t² (β_max − β_min) − ½ t β_min = −½ ∫₀ᵗ β(s) ds."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x, t):
        beta_t = self.beta(t)
        return -0.5 * batch_mul(beta_t, x), jnp.sqrt(beta_t)

    def marginal_prob(self, x, t):
        """mean e^{lmc} x, std √(1 − e^{2 lmc}) (as −expm1: no cancellation at small t)."""
        lmc = self.log_mean_coeff(t)
        return batch_mul(jnp.exp(lmc), x), jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def prior_sampling(self, rng, shape):
        return prng.normal(rng, shape)

    def prior_logp(self, z):
        return _gaussian_logp(z, 1.0)

    def discretize(self, x, t):
        """DDPM: f_i = √α_i x − x, G_i = √β_i."""
        i = step_index(t, self.N, self.T)
        beta = self.discrete_betas[i]
        f = batch_mul(self.sqrt_alphas_m1[i], x)  # (√α_i − 1) x without cancellation
        return f, jnp.sqrt(beta)


class subVPSDE(VPSDE):
    """sub-VP SDE: f = −½ β(t) x, g = √(β(t) (1 − e^{−2∫₀ᵗβ})); mean = e^{lmc} x(0),
    std = 1 − e^{2 lmc} (not its square root); prior N(0, I). Discretized by Euler–Maruyama.

    The DDPM tables (``discrete_betas``, ``alphas``, ...) of :class:`VPSDE` are kept: the
    Langevin corrector's step-size factor α_i uses them for VP and sub-VP alike.
    """

    def sde(self, x, t):
        beta_t = self.beta(t)
        discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))  # 1 − e^{−2∫β}
        return -0.5 * batch_mul(beta_t, x), jnp.sqrt(beta_t * discount)

    def marginal_prob(self, x, t):
        """mean e^{lmc} x, std 1 − e^{2 lmc} (as −expm1: no cancellation at small t)."""
        lmc = self.log_mean_coeff(t)
        return batch_mul(jnp.exp(lmc), x), -jnp.expm1(2.0 * lmc)

    discretize = SDE.discretize


SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": subVPSDE}


def get_sde(config) -> tuple[SDE, float]:
    """The SDE of ``config.training.sde`` and its sampling ε (1e-5 for VE, 1e-3 otherwise).

    Reads ``config.model.{sigma_min, sigma_max, beta_min, beta_max, num_scales}``.
    """
    name = str(config.training.sde).lower()
    if name not in SDES:
        raise ValueError(f"config.training.sde={config.training.sde!r} is not one of {sorted(SDES)}")
    m = config.model
    if name == "vesde":
        return VESDE(m.sigma_min, m.sigma_max, m.num_scales), 1e-5
    return SDES[name](m.beta_min, m.beta_max, m.num_scales), 1e-3


def check_score_fn(score_fn: ScoreFn) -> ScoreFn:
    """Wrap ``score_fn`` so a wrong output shape is an error naming both shapes."""

    @functools.wraps(score_fn)
    def checked(x, t):
        out = score_fn(x, t)
        if out.shape != x.shape:
            raise ValueError(f"score_fn returned shape {out.shape} for x of shape {x.shape}; "
                             "it must return the score with x's shape")
        return out

    return checked
