"""DPM-Solver++ (Lu et al. 2022): multistep 2M / 3M on a fixed σ̃ grid, and the adaptive
single-step solver, on the probability-flow ODE of any SDE here (σ̃ parametrization,
:mod:`.sigma`)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from score_sde_jax import sde_lib
from score_sde_jax.sampling.sigma import (
    SKIP_TYPES,
    SigmaSchedule,
    check,
    data_prediction,
    prior,
    sigma_grid,
)

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Sampler = Callable[..., tuple[Array, Array | int]]


# --------------------------------------------------------------------------- DPM-Solver++
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
    check(int(num_steps) >= 1, f"dpm_solver: num_steps must be >= 1, got {num_steps}")
    check(order in (1, 2, 3), f"dpm_solver: order must be 1, 2 or 3, got {order!r}")
    check(skip_type in SKIP_TYPES, f"dpm_solver: unknown skip_type {skip_type!r}; valid: {list(SKIP_TYPES)}")
    schedule = SigmaSchedule(sde)
    num_steps = int(num_steps)
    orders = np.minimum(order, np.arange(num_steps) + 1)
    if lower_order_final and num_steps < 15:
        orders = np.minimum(orders, num_steps - np.arange(num_steps))
    branches = [lambda *a, k=k: _multistep_update(schedule, *a, k) for k in (1, 2, 3)]

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, int]:
        x0_fn = data_prediction(sde_lib.check_score_fn(score_fn), schedule)
        sig = sigma_grid(schedule, num_steps, skip_type, eps, rho)
        x = prior(sde, shape, rng, z, temperature)

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
    check(order in (2, 3), f"dpm_solver adaptive: order must be 2 or 3, got {order!r}")
    check(rtol > 0 and atol > 0, f"dpm_solver adaptive: rtol, atol must be > 0, got {rtol}, {atol}")
    check(h_init > 0 and 0 < theta <= 1, f"dpm_solver adaptive: need h_init > 0, 0 < theta <= 1, "
                                          f"got {h_init}, {theta}")
    schedule = SigmaSchedule(sde)

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, Array]:
        x0_fn = data_prediction(sde_lib.check_score_fn(score_fn), schedule)
        x = prior(sde, shape, rng, z, temperature)
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
