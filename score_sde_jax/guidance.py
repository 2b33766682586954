"""Classifier-free guidance (Ho & Salimans 2022) with a guidance interval (Kynkäänniemi et al. 2024).

One label-conditional network s(x, t, y), trained with label dropout (:mod:`losses`), gives
both the conditional score s(x, t, c) ≈ ∇ log p_t(x | c) and, with the null label ∅ = K, the
unconditional s(x, t, ∅) ≈ ∇ log p_t(x). The guided score of class c with weight w is

    s_w(x, t, c) = (1 + w) s(x, t, c) − w s(x, t, ∅)
                 = s(x, t, c) + w (s(x, t, c) − s(x, t, ∅)),

the score of p_t(x | c)^(1+w) / p_t(x)^w ∝ p_t(x | c) p_t(c | x)^w: w = 0 samples p(x | c),
w > 0 sharpens toward x that the implicit classifier p_t(c | x) calls c.

Guidance interval: w(t) = w where σ_lo ≤ σ̃(t) ≤ σ_hi and 0 elsewhere, with σ̃(t) = std(t) / m(t)
the SDE's own noise scale (``sde.marginal_prob``: x_t = m(t) x₀ + std(t) z, so x_t / m(t) is x₀
plus noise of standard deviation σ̃; σ̃ = σ(t) for VE). ``None`` or (0, inf) guides everywhere.

Cost: both halves go through the network in ONE call on a batch of 2B (x and t repeated,
labels c then ∅), so a guided step counts one function evaluation (NFE) like an unguided step.
The result is an ordinary ``score_fn(x, t)``: every sampler (PC, ODE, Heun, DPM-Solver++) uses it
unchanged. Likelihoods stay unguided (s_w is not the score of a normalized p_t for w ≠ 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from score_sde_jax import sampling, sde_lib
from score_sde_jax.models import utils as mutils

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
ConditionalScoreFn = Callable[[Array, Array, Array], Array]
Interval = tuple[float, float]
EVERYWHERE: Interval = (0.0, math.inf)


def noise_scale(sde: sde_lib.SDE, t: Array) -> Array:
    """σ̃(t) = std(t) / m(t), shape (B,) for t (B,)."""
    mean, std = sde.marginal_prob(jnp.ones_like(t), t)
    return std / mean


def check_interval(interval: Sequence[float] | None) -> Interval:
    """(σ_lo, σ_hi) as floats with 0 ≤ σ_lo ≤ σ_hi; None -> (0, inf)."""
    if interval is None:
        return EVERYWHERE
    if len(interval) != 2:
        raise ValueError(f"guidance_interval={interval!r}: expected (sigma_lo, sigma_hi) or None")
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= hi:
        raise ValueError(f"guidance_interval={interval!r}: need 0 <= sigma_lo <= sigma_hi")
    return lo, hi


def guidance_weight(sde: sde_lib.SDE, t: Array, cfg_scale: float | Array,
                    interval: Sequence[float] | None = None) -> Array:
    """w(t), shape (B,): ``cfg_scale`` where σ_lo ≤ σ̃(t) ≤ σ_hi, else 0."""
    lo, hi = check_interval(interval)
    w = jnp.broadcast_to(jnp.asarray(cfg_scale, t.dtype), t.shape)
    if (lo, hi) == EVERYWHERE:
        return w
    sigma = noise_scale(sde, t)
    return jnp.where((sigma >= lo) & (sigma <= hi), w, 0.0)


def guided_score_fn(sde: sde_lib.SDE, score_fn: ConditionalScoreFn, class_labels: Array | int,
                    null_label: int, cfg_scale: float | Array = 0.0,
                    interval: Sequence[float] | None = None) -> ScoreFn:
    """The guided ``score(x, t) = (1 + w(t)) s(x, t, c) − w(t) s(x, t, ∅)`` of the module docstring.

    Args:
      score_fn: the conditional score s(x (B', ...), t (B',), y (B',)) (e.g.
        ``models.utils.get_score_fn``'s, or ``analytic.GaussianMixture.conditional_score_fn``).
      class_labels: c, an int or (B,) ints in {0..K−1}, broadcast to x's batch.
      null_label: ∅ = K, the label the network was trained with for "no class".
      cfg_scale: w (a Python number or a traced scalar). A Python 0 means s(x, t, c) alone, on
        a batch of B (no null half is computed).
      interval: (σ_lo, σ_hi) of :func:`guidance_weight`; None = every noise level.

    Each call evaluates ``score_fn`` once, on the 2B batch [x; x], [t; t], [c; ∅].
    """
    interval = check_interval(interval)
    if isinstance(class_labels, int) and not 0 <= class_labels < null_label:
        raise ValueError(f"class label {class_labels} is not one of 0..{null_label - 1}")

    def labels_for(x: Array) -> Array:
        return jnp.broadcast_to(jnp.asarray(class_labels, jnp.int32), x.shape[:1])

    if isinstance(cfg_scale, int | float) and cfg_scale == 0:
        return lambda x, t: score_fn(x, t, labels_for(x))

    def guided(x: Array, t: Array) -> Array:
        b = x.shape[0]
        c = labels_for(x)
        y = jnp.concatenate([c, jnp.full_like(c, null_label)])
        both = score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)
        cond, uncond = both[:b], both[b:]
        w = guidance_weight(sde, t, cfg_scale, interval).astype(cond.dtype)
        return cond + sde_lib.batch_mul(w, cond - uncond)

    return guided


def guidance_settings(config) -> tuple[float, Interval]:
    """(w, (σ_lo, σ_hi)) from ``config.sampling.cfg_scale`` and ``guidance_interval`` (None is
    read as (0, inf)), through the one reader of ``config.sampling``."""
    s = sampling.settings(config)
    return float(s.cfg_scale), check_interval(s.guidance_interval)


def get_guided_score_fn(config, sde: sde_lib.SDE, variables: dict, class_labels: Array | int,
                        cfg_scale: float | Array | None = None) -> ScoreFn:
    """``score_fn(x, t)`` of the network of ``config`` with ``variables``, guided toward
    ``class_labels`` with ``config.sampling``'s w and interval (``cfg_scale`` overrides w).

    The network must be label-conditional (``config.model.num_classes`` = K > 0; ∅ = K).
    """
    k = mutils.num_classes(config)
    if not k:
        raise ValueError("classifier-free guidance needs a label-conditional network "
                         "(config.model.num_classes > 0)")
    w, interval = guidance_settings(config)
    score = mutils.get_score_fn(sde, mutils.get_model(config), variables, train=False,
                                continuous=bool(config.training.continuous))
    return guided_score_fn(sde, score, class_labels, k, w if cfg_scale is None else cfg_scale,
                           interval)
