"""Denoising score matching objectives (SPEC §3).

All losses are pure: ``loss(rng, fn, batch) -> scalar`` with ``batch`` of shape (B, *data_shape);
``rng`` is one key or one key per example (:mod:`prng`: example b's t and noise are then drawn
from its own key alone).
The continuous loss takes a ``score_fn(x, t)``; the discrete SMLD / DDPM losses take the raw
network ``model_fn(x, labels)`` with integer step labels, as those models are trained.

:func:`get_step_loss` is the training step's objective chosen by the config, as the official
``get_step_fn``: continuous DSM, SMLD or DDPM for ``config.training.task = 'score'``, the
noise-conditional classifier's cross-entropy for ``'classifier'``.

Label-conditional networks (``num_classes`` K > 0, classifier-free guidance): the losses then
take ``labels`` (B,) in {0..K−1}, replace each by the null label K with probability
``label_dropout`` (a Bernoulli draw from the example's own key folded with
:data:`LABEL_DROPOUT_SALT`, so 1 and 8 devices drop the same labels, while the t and noise draws
stay those of the unconditional loss), and call ``fn(x, t, labels)``. One network then learns
both s(x, t, c) and the unconditional s(x, t, ∅).

Per-sample reduction over the D data dimensions, as the official ``reduce_op``:
``reduce_mean=True`` averages, ``reduce_mean=False`` takes **½ × the sum**. The ½ makes the
sum-reduced DSM the score-matching objective ½ λ(t) ‖s(x_t, t) − ∇ log p(x_t | x₀)‖² (the
Fisher divergence's ½ E‖s − ∇ log p‖² of Hyvärinen and Vincent), as in the official code, so
its value and gradient, and with them where the gradient clip ``optim.grad_clip`` bites, equal
the official ones (SPEC §3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde_jax import classifier_lib, prng, sde_lib
from score_sde_jax.models import utils as mutils

Array = jax.Array
LossFn = Callable[..., Array]
Batch = Mapping[str, Array]
StepLoss = Callable[[dict, Array, Batch], tuple[Array, dict]]
TASKS = ("score", "classifier")
LABEL_DROPOUT_SALT = 0x1ABE1


def drop_labels(rng: Array, labels: Array, label_dropout: float, num_classes: int) -> Array:
    """labels (B,) with each replaced by the null label K = ``num_classes`` with probability
    ``label_dropout``; the draw is U[0, 1) < p from ``fold_in(rng, LABEL_DROPOUT_SALT)`` (one
    key, or one key per example: :mod:`prng`)."""
    labels = jnp.asarray(labels, jnp.int32)
    if not label_dropout:
        return labels
    u = prng.uniform(prng.fold_in(rng, LABEL_DROPOUT_SALT), labels.shape)
    return jnp.where(u < label_dropout, num_classes, labels)


def _conditioner(num_classes: int, label_dropout: float):
    """``(rng, fn, labels) -> fn'`` with fn' the network with the (dropped) labels applied,
    or fn itself for an unconditional network (labels must then be None)."""
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout={label_dropout} must lie in [0, 1]")

    def condition(rng: Array, fn: Callable, labels: Array | None) -> Callable:
        if not num_classes:
            return fn
        if labels is None:
            raise ValueError(f"a label-conditional network (num_classes={num_classes}) is trained "
                             "on batches with labels")
        y = drop_labels(rng, labels, label_dropout, num_classes)
        return lambda x, s: fn(x, s, y)

    return condition


def _reduce(losses: Array, reduce_mean: bool) -> Array:
    """Mean, or ½ × the sum (see the module docstring), over every non-batch axis: (B, ...) -> (B,)."""
    axes = tuple(range(1, losses.ndim))
    return jnp.mean(losses, axis=axes) if reduce_mean else 0.5 * jnp.sum(losses, axis=axes)


def get_sde_loss_fn(
    sde: sde_lib.SDE, reduce_mean: bool = True, likelihood_weighting: bool = True, eps: float = 1e-5,
    num_classes: int = 0, label_dropout: float = 0.0,
) -> LossFn:
    """Continuous-time DSM: t ~ U(ε, T), x_t = mean + std z.

    λ(t) = std²:  ℓ = ‖s(x_t, t) std + z‖²;  λ(t) = g(t)² (``likelihood_weighting``):
    ℓ = ‖s(x_t, t) + z / std‖² g(t)², each ‖·‖² reduced over D as in the module docstring.
    The batch mean of ℓ is returned; its minimizer is s = ∇ₓ log p_t.

    ``likelihood_weighting`` defaults to True as in the official ``get_sde_loss_fn``; training
    reads ``config.training.likelihood_weighting`` instead (False in every paper config: λ = std²).
    ``num_classes`` > 0: ``loss_fn(rng, score_fn, batch, labels)`` with ``score_fn(x, t, y)``
    (module docstring).
    """
    condition = _conditioner(num_classes, label_dropout)

    def loss_fn(rng: Array, score_fn: Callable, batch: Array, labels: Array | None = None) -> Array:
        score_fn = condition(rng, score_fn, labels)
        rng_t, rng_z = prng.split(rng)
        t = prng.uniform(rng_t, (batch.shape[0],), minval=eps, maxval=sde.T)
        z = prng.normal(rng_z, batch.shape)
        mean, std = sde.marginal_prob(batch, t)
        score = score_fn(mean + sde_lib.batch_mul(std, z), t)
        if likelihood_weighting:
            g2 = sde.sde(jnp.zeros_like(batch), t)[1] ** 2
            losses = _reduce((score + sde_lib.batch_mul(1.0 / std, z)) ** 2, reduce_mean) * g2
        else:
            losses = _reduce((sde_lib.batch_mul(std, score) + z) ** 2, reduce_mean)
        return jnp.mean(losses)

    return loss_fn


def get_smld_loss_fn(vesde: sde_lib.VESDE, reduce_mean: bool = False, num_classes: int = 0,
                     label_dropout: float = 0.0) -> LossFn:
    """Discrete SMLD (NCSN): i ~ U{0..N−1} into the descending σ table, x̃ = x + σ_i z,
    ℓ = ‖s(x̃, i) − (−z/σ_i)‖² σ_i²; ``model_fn(x̃, i)`` returns the score (``model_fn(x̃, i, y)``
    and a ``labels`` argument with ``num_classes`` > 0, as :func:`get_sde_loss_fn`)."""
    if not isinstance(vesde, sde_lib.VESDE):
        raise ValueError(f"the SMLD loss needs a VESDE, got {type(vesde).__name__}")
    sigmas = jnp.flip(vesde.discrete_sigmas)
    condition = _conditioner(num_classes, label_dropout)

    def loss_fn(rng: Array, model_fn: Callable, batch: Array, labels: Array | None = None) -> Array:
        model_fn = condition(rng, model_fn, labels)
        rng_i, rng_z = prng.split(rng)
        labels = prng.randint(rng_i, (batch.shape[0],), 0, vesde.N)
        sigma = sigmas[labels]
        noise = sde_lib.batch_mul(sigma, prng.normal(rng_z, batch.shape))
        score = model_fn(batch + noise, labels)
        target = -sde_lib.batch_mul(1.0 / sigma**2, noise)
        return jnp.mean(_reduce((score - target) ** 2, reduce_mean) * sigma**2)

    return loss_fn


def get_ddpm_loss_fn(vpsde: sde_lib.VPSDE, reduce_mean: bool = True, num_classes: int = 0,
                     label_dropout: float = 0.0) -> LossFn:
    """Discrete DDPM: i ~ U{0..N−1}, x̃ = √ᾱ_i x + √(1−ᾱ_i) z, ℓ = ‖ε̂(x̃, i) − z‖² (labels as
    :func:`get_smld_loss_fn`)."""
    if type(vpsde) is not sde_lib.VPSDE:
        raise ValueError(f"the DDPM loss needs a VPSDE, got {type(vpsde).__name__}")
    condition = _conditioner(num_classes, label_dropout)

    def loss_fn(rng: Array, model_fn: Callable, batch: Array, labels: Array | None = None) -> Array:
        model_fn = condition(rng, model_fn, labels)
        rng_i, rng_z = prng.split(rng)
        labels = prng.randint(rng_i, (batch.shape[0],), 0, vpsde.N)
        z = prng.normal(rng_z, batch.shape)
        perturbed = sde_lib.batch_mul(vpsde.sqrt_alphas_cumprod[labels], batch) + sde_lib.batch_mul(
            vpsde.sqrt_1m_alphas_cumprod[labels], z
        )
        return jnp.mean(_reduce((model_fn(perturbed, labels) - z) ** 2, reduce_mean))

    return loss_fn


# ----------------------------------------------------------------------------- chosen by the config
def get_step_loss(config, sde: sde_lib.SDE, model: nn.Module, train: bool = True) -> StepLoss:
    """``loss(params, rng, batch) -> (scalar loss, aux dict)`` of ``config.training.task``.

    ``batch['image']`` reaches the loss already scaled (``datasets.get_data_scaler``); ``rng``
    is one key or one key per example (then example b draws its noise from key b alone)."""
    task = config.training.task
    if task == "score":
        return _score_loss(config, sde, model, train)
    if task == "classifier":
        return classifier_lib.get_classifier_step_loss(config, sde, model, train)
    raise ValueError(f"config.training.task={task!r} is not a training task; known: {list(TASKS)}")


def _score_loss(config, sde: sde_lib.SDE, model: nn.Module, train: bool) -> StepLoss:
    """Denoising score matching: continuous DSM (SPEC §3), or discrete SMLD (VE) / DDPM (VP).
    A label-conditional network (``model.num_classes`` > 0) reads ``batch['label']``, replaced
    by the null label with probability ``training.label_dropout`` when training."""
    t = config.training
    continuous, reduce_mean = bool(t.continuous), bool(t.reduce_mean)
    weighting = bool(t.likelihood_weighting)
    k = mutils.num_classes(config)
    cond = {"num_classes": k, "label_dropout": float(t.label_dropout) if train else 0.0}
    if continuous:
        loss_fn = get_sde_loss_fn(sde, reduce_mean, weighting, **cond)
    elif weighting:
        raise ValueError("config.training.likelihood_weighting=True needs "
                         "config.training.continuous=True")
    elif isinstance(sde, sde_lib.VESDE):
        loss_fn = get_smld_loss_fn(sde, reduce_mean, **cond)
    elif type(sde) is sde_lib.VPSDE:
        loss_fn = get_ddpm_loss_fn(sde, reduce_mean, **cond)
    else:
        raise ValueError(f"config.training.continuous=False (discrete SMLD / DDPM training) is "
                         f"for vesde / vpsde, not config.training.sde={t.sde!r}")

    def loss(params: dict, rng: Array, batch: Batch) -> tuple[Array, dict]:
        rng_loss, rng_dropout = prng.split(rng)  # per-example keys: per-example masks too
        variables = {"params": params}
        dropout = rng_dropout if train else None
        if continuous:
            fn = mutils.get_score_fn(sde, model, variables, train, True, dropout)
        else:
            fn = mutils.get_model_fn(model, variables, train, dropout)
        labels = batch["label"] if k else None
        return loss_fn(rng_loss, fn, batch["image"], labels), {}

    return loss


def summed_per_example(loss_fn: StepLoss, batched: bool = False
                       ) -> Callable[[dict, Array, Batch], tuple[Array, dict]]:
    """``(params, keys (b, 2), batch (b, ...)) -> (Σ_i loss_i, Σ_i aux_i)`` where loss_i is
    ``loss_fn`` on example i alone with key ``keys[i]``. ``batched``: one call on the whole
    batch with the per-example keys, times b (the same values for the score task,
    :func:`batched_loss`); else ``vmap`` of batch-of-one calls (1.17× slower, BENCHMARKS.md §4)."""
    if batched:
        def whole(params: dict, keys: Array, batch: Batch) -> tuple[Array, dict]:
            loss, aux = loss_fn(params, keys, batch)
            return jax.tree_util.tree_map(lambda v: v * keys.shape[0], (loss, aux))

        return whole

    def summed(params: dict, keys: Array, batch: Batch) -> tuple[Array, dict]:
        def one(key, example):
            return loss_fn(params, key, jax.tree_util.tree_map(lambda v: v[None], example))

        per_loss, per_aux = jax.vmap(one)(keys, batch)
        return jnp.sum(per_loss), jax.tree_util.tree_map(jnp.sum, per_aux)

    return summed


def batched_loss(config) -> bool:
    """True when the training loss can run on the whole batch with per-example keys: the score
    task (its noise draws and dropout masks take one key per example, ``prng.batch_key``);
    other tasks run each example alone (:func:`summed_per_example`)."""
    return config.training.task == "score"
