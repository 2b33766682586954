"""Jit-compiled evaluation steps built from a config: the network's score function from its
parameters, a sampler, bits/dim of 8-bit data, and the evaluation loss.

Every step takes the network parameters as its first *argument* (they are never closed over as
constants), so one compilation serves every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax

from score_sde_jax import datasets, likelihood, sampling, sde_lib, train_lib
from score_sde_jax.models import utils as mutils

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def is_flat(config) -> bool:
    """True for flat data (``config.data.dim`` set, e.g. 2-D toy points), False for images."""
    return bool(config.data.get("dim", None))


def as_variables(params: Mapping) -> dict:
    """Flax variables ``{'params': ...}`` from a parameter tree (variables pass through)."""
    return dict(params) if "params" in params else {"params": params}


def score_fn_builder(config, sde: sde_lib.SDE) -> Callable[[Mapping], ScoreFn]:
    """``build(params) -> score_fn(x, t)`` for the network of ``config`` (SPEC §2)."""
    model = mutils.get_model(config)
    continuous = bool(config.training.continuous)

    def build(params: Mapping) -> ScoreFn:
        return mutils.get_score_fn(sde, model, as_variables(params), train=False,
                                   continuous=continuous)

    return build


def get_sample_fn(config, sde: sde_lib.SDE, build: Callable[[Mapping], ScoreFn], batch_size: int,
                  eps: float) -> Callable[[Mapping, Array], tuple[Array, Array]]:
    """Jitted ``sample(params, rng) -> (x (batch_size, *data_shape) in model space, nfe)`` with
    the sampler of ``config.sampling`` (:func:`sampling.get_sampling_fn`)."""
    shape = (int(batch_size), *mutils.data_shape(config))
    sampler = sampling.get_sampling_fn(config, sde, shape, eps)
    return jax.jit(lambda params, rng: sampler(rng, build(params)))


def bpd_offset(config) -> float:
    """The constant added to ``−log p_model(y) / (D ln 2)`` to get bits/dim of the data.

    8-bit data k ∈ {0..255}ᴰ are dequantized to x = (k + u) / 256, u ~ U[0, 1)ᴰ, a point of the
    cell of k, whose volume is 256⁻ᴰ. For a density p_X on [0, 1)ᴰ, Jensen's inequality gives
    −log₂ P(k) ≤ E_u[−log₂ p_X(x)] + 8 D, so bits/dim ≤ E[−log₂ p_X(x)] / D + 8.
    The model's density is over y = a x + b (the data scaler; a = 2 when centered to [−1, 1]),
    and the change of variables p_X(x) = p_Y(y) aᴰ turns −log₂ p_X / D into
    −log p_Y(y) / (D ln 2) − log₂ a. Offset = 8 − log₂ a: 8 for data in [0, 1], 7 for centered
    data -- :func:`likelihood.bpd_offset`, the official ``7 − inverse_scaler(−1)``.
    Flat (toy) data have no 8-bit grid: offset = −log₂ a, the bits/dim of the continuous
    density in data coordinates.
    """
    scaler = datasets.get_data_scaler(config)
    log2_scale = math.log2(float(scaler(1.0) - scaler(0.0)))  # the scaler is affine
    return -log2_scale if is_flat(config) else 8.0 - log2_scale


def get_bpd_fn(config, sde: sde_lib.SDE, build: Callable[[Mapping], ScoreFn]
               ) -> Callable[[Mapping, Array, Array], tuple[Array, Array]]:
    """Jitted ``bpd(params, rng, data) -> (bits/dim (B,), nfe (B,))`` of data in [0, 1]
    (dequantized images (B, H, W, C), or flat points (B, D) in data coordinates).

    The data are mapped by the data scaler, their log-density is the PF-ODE likelihood
    (:func:`likelihood.get_likelihood_fn` with ``config.eval.hutchinson_type``,
    ``likelihood_rtol`` / ``likelihood_atol``, ``likelihood_eps``), and bits/dim adds
    :func:`bpd_offset`.
    """
    ev = config.eval
    lik = likelihood.get_likelihood_fn(
        sde, hutchinson_type=ev.get("hutchinson_type", "rademacher"),
        rtol=ev.get("likelihood_rtol", 1e-5), atol=ev.get("likelihood_atol", 1e-5),
        eps=ev.get("likelihood_eps", 1e-5), solver=ev.get("likelihood_solver", sampling.DEFAULT_SOLVER))
    scaler = datasets.get_data_scaler(config)
    dim = math.prod(mutils.data_shape(config))
    offset = bpd_offset(config)

    @jax.jit
    def bpd(params: Mapping, rng: Array, data: Array) -> tuple[Array, Array]:
        logp, _, nfe = lik(rng, build(params), scaler(data))
        return likelihood.bits_per_dim(logp, dim, offset), nfe

    return bpd


def get_eval_loss_fn(config, sde: sde_lib.SDE) -> Callable[[Mapping, Array, Mapping], Array]:
    """Jitted ``loss(params, rng, batch) -> scalar``: the training objective of ``config``
    (``train_lib.get_step_loss`` with ``train=False``: no dropout) on a batch whose 'image' is
    already scaled by the data scaler."""
    loss = train_lib.get_step_loss(config, sde, mutils.get_model(config), train=False)
    return jax.jit(lambda params, rng, batch: loss(params, rng, batch)[0])
