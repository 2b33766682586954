"""Jit-compiled steps on trained parameters, built from a config: the network's score function
from its parameters, a sampler, bits/dim of 8-bit data and the evaluation loss. The sampling,
encoding and evaluation modes (``inference/``, ``evaluation/``) run them.

Every step is jitted over a 1-D ``data`` mesh (:mod:`score_sde_jax.sharding`): the
network parameters are its first, replicated *argument* (never closed over as constants, so one
compilation serves every checkpoint), the batch is sharded over every device of every process.
Random draws come from one key per example, ``fold_in(rng, i)`` with ``i`` the example's global
index (``indices``, sharded with the batch): example i's result depends on (rng, i) alone, not on
the device count, the process count or its position in the batch. Two exceptions are coupled
over the batch (hence depend on the batch, never on the devices): the Langevin corrector's step
size (a mean over the global batch, as in the official code) and the adaptive ODE solvers' step
size (one ODE state for the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from score_sde_jax import (
    datasets,
    guidance,
    likelihood,
    losses,
    ode_solver,
    prng,
    sampling,
    sde_lib,
    sharding,
)
from score_sde_jax.models import utils as mutils
from score_sde_jax.sharding import jit_batch

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

# Sub-streams of a checkpoint's key (jax.random.fold_in).
LOSS_STREAM, BPD_STREAM, SAMPLE_STREAM = 0, 1, 2


def sample_key(config, step: int, stream: int = SAMPLE_STREAM) -> Array:
    """The key of a checkpoint's evaluation stream: fold_in(fold_in(PRNGKey(seed), step), stream).
    Sample i of the checkpoint of ``step`` draws from ``fold_in(sample_key(config, step), i)``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), step),
                              stream)


def as_variables(params: Mapping) -> dict:
    """Flax variables ``{'params': ...}`` from a parameter tree (variables pass through)."""
    return dict(params) if "params" in params else {"params": params}


def score_fn_builder(config, sde: sde_lib.SDE) -> Callable[..., ScoreFn]:
    """``build(params, labels=None) -> score_fn(x, t)`` for the network of ``config`` (SPEC §2).

    ``labels`` (B,) of a label-conditional network (``model.num_classes`` > 0): the guided score
    of those classes with ``config.sampling.cfg_scale`` and ``guidance_interval``
    (:func:`guidance.get_guided_score_fn`, one network call a step); None: the plain score (for
    a conditional network, the unconditional one, of the null label)."""
    model = mutils.get_model(config)
    continuous = bool(config.training.continuous)

    def build(params: Mapping, labels: Array | None = None) -> ScoreFn:
        if labels is not None:
            return guidance.get_guided_score_fn(config, sde, as_variables(params), labels)
        return mutils.get_score_fn(sde, model, as_variables(params), train=False,
                                   continuous=continuous)

    return build


def sample_labels(config, indices: Array, class_label: int | None = None) -> Array | None:
    """The class of each sample of a label-conditional network: ``class_label`` for all, or
    balanced classes ``indices mod K`` (so sample i's class follows from its number, as its
    key does); None for an unconditional network (``class_label`` then is an error)."""
    k = mutils.num_classes(config)
    if not k:
        if class_label is not None:
            raise ValueError(f"--class_label={class_label}: the network of this config has no "
                             "classes (config.model.num_classes = 0); give a noise-conditional "
                             "classifier with --classifier_workdir, or train a label-conditional "
                             "model (config.model.num_classes > 0)")
        return None
    if class_label is not None:
        if not 0 <= int(class_label) < k:
            raise ValueError(f"--class_label={class_label} is not a class of the network "
                             f"(0 .. {k - 1}, config.model.num_classes={k})")
        return jnp.full(indices.shape, int(class_label), jnp.int32)
    return (indices % k).astype(jnp.int32)


def get_sample_fn(config, sde: sde_lib.SDE, build: Callable[..., ScoreFn], batch_size: int,
                  eps: float, mesh: Mesh, class_label: int | None = None
                  ) -> Callable[[Mapping, Array, Array], tuple[Array, Array]]:
    """Jitted ``sample(params, rng, indices (B,)) -> (x (B, *data_shape) in model space, nfe)``
    with the sampler of ``config.sampling`` (:func:`sampling.get_sampling_fn`), sample b drawn
    from the key ``fold_in(rng, indices[b])``; x is sharded over ``mesh``, nfe replicated. A
    label-conditional network samples the classes of :func:`sample_labels`, guided."""
    shape = (int(batch_size), *mutils.data_shape(config))
    sampler = sampling.get_sampling_fn(config, sde, shape, eps)
    sample_labels(config, jnp.zeros((1,), jnp.int32), class_label)  # bad labels fail here

    def draw(params, rng, indices):
        labels = sample_labels(config, indices, class_label)
        return sampler(prng.example_keys(rng, indices), build(params, labels))

    return jit_batch(draw, mesh, 2, 1, out=(sharding.data_sharding(mesh), sharding.replicated(mesh)))


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
    return -log2_scale if mutils.is_flat(config) else 8.0 - log2_scale


def get_bpd_fn(config, sde: sde_lib.SDE, build: Callable[[Mapping], ScoreFn], mesh: Mesh
               ) -> Callable[[Mapping, Array, Array, Array], tuple[Array, Array]]:
    """Jitted ``bpd(params, rng, indices (B,), data) -> (bits/dim (B,), nfe (B,))`` over ``mesh``
    of data in [0, 1] (8-bit images k / 255 (B, H, W, C), or flat points (B, D) in data
    coordinates).

    Example b's key ``fold_in(rng, indices[b])`` draws its uniform dequantization noise
    (images: x = (255 y + u) / 256, u ~ U[0, 1)ᴰ, as the official bits/dim pass) and its
    Hutchinson probe. The data are mapped by the data scaler, their log-density is the PF-ODE
    likelihood (:func:`likelihood.get_likelihood_fn` with ``config.eval.hutchinson_type``,
    ``likelihood_rtol`` / ``likelihood_atol``, ``likelihood_eps``), one ODE per example
    (``eval.likelihood_per_sample``, default True: independent of the batch and devices), and
    bits/dim adds :func:`bpd_offset`.
    """
    ev = config.eval
    lik = likelihood.get_likelihood_fn(
        sde, hutchinson_type=ev.get("hutchinson_type", "rademacher"),
        rtol=ev.get("likelihood_rtol", 1e-5), atol=ev.get("likelihood_atol", 1e-5),
        eps=ev.get("likelihood_eps", 1e-5), solver=ev.get("likelihood_solver", ode_solver.DEFAULT_SOLVER),
        per_sample=ev.get("likelihood_per_sample", True))
    scaler = datasets.get_data_scaler(config)
    dim = math.prod(mutils.data_shape(config))
    offset, flat = bpd_offset(config), mutils.is_flat(config)

    def bpd(params: Mapping, rng: Array, indices: Array, data: Array) -> tuple[Array, Array]:
        dequantize, probe = prng.split(prng.example_keys(rng, indices))
        if not flat:
            data = (255.0 * data + prng.uniform(dequantize, data.shape, data.dtype)) / 256.0
        logp, _, nfe = lik(probe, build(params), scaler(data))
        return likelihood.bits_per_dim(logp, dim, offset), nfe

    return jit_batch(bpd, mesh, 2, 2)


def get_eval_loss_fn(config, sde: sde_lib.SDE, mesh: Mesh
                     ) -> Callable[[Mapping, Array, Array, Array, Array], Array]:
    """Jitted ``loss(params, rng, indices (B,), images, labels) -> (B,)`` over ``mesh``: each
    example's training objective (``losses.get_step_loss`` with ``train=False``: no dropout)
    with its own key ``fold_in(rng, indices[b])``; images already scaled by the data scaler.
    The mean over examples is the batch loss of the objective."""
    loss = losses.get_step_loss(config, sde, mutils.get_model(config), train=False)

    def per_example(params, rng, indices, images, labels):
        def one(key, image, label):
            return loss(params, key, {"image": image[None], "label": label[None]})[0]

        return jax.vmap(one)(prng.example_keys(rng, indices), images, labels)

    return jit_batch(per_example, mesh, 2, 3)
