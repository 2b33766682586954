"""EDM's Heun sampler (Karras et al. 2022, Alg. 2) on the probability-flow ODE of any SDE here,
in the σ̃ parametrization of :mod:`.sigma`; optional churn (stochastic steps)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde_jax import prng, sde_lib
from score_sde_jax.sampling.sigma import SigmaSchedule, check, data_prediction, karras_sigmas, prior

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Sampler = Callable[..., tuple[Array, Array | int]]


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
    check(int(num_steps) >= 1, f"heun: num_steps must be >= 1, got {num_steps}")
    check(rho > 0, f"heun: rho must be > 0, got {rho}")
    check(s_churn >= 0 and s_noise >= 0, f"heun: s_churn, s_noise must be >= 0, got {s_churn}, {s_noise}")
    check(s_tmin <= s_tmax, f"heun: s_tmin ({s_tmin}) must not exceed s_tmax ({s_tmax})")
    check(sigma_min is None or sigma_min > 0, f"heun: sigma_min must be > 0, got {sigma_min}")
    schedule = SigmaSchedule(sde)
    num_steps = int(num_steps)

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, int]:
        x0_fn = data_prediction(sde_lib.check_score_fn(score_fn), schedule)
        sig_min = schedule.sigma(eps) if sigma_min is None else sigma_min
        sig = karras_sigmas(sig_min, schedule.sigma(sde.T), num_steps, rho)
        gamma = jnp.where((sig >= s_tmin) & (sig <= s_tmax), min(s_churn / num_steps, math.sqrt(2) - 1), 0.0)
        x = prior(sde, shape, rng, z, temperature) / schedule.mean_coeff(sig[0])  # = dpm_solver, ode prior

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
