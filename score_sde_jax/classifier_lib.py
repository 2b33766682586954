"""Noise-conditional classifiers p_t(y | x(t)) for class-conditional sampling (SPEC §6).

* :func:`get_classifier_loss_fn` -- the training objective: cross-entropy of the classifier on
  x_t = mean_t(x₀) + std_t z with t ~ U(ε, T), the classifier seeing (x_t, noise label of t).
* :func:`classifier_logp_fn` -- a trained network as ``logp(x, t) -> (B, n_classes)``
  log p_t(y | x), the input of :func:`controllable_generation.get_guided_score_fn`.
* :func:`mixture_class_logp_fn` -- the exact (Bayes) p_t(y = k | x) of a Gaussian mixture whose
  components are the classes: the component posterior of the perturbed mixture p_t.
* :func:`get_classifier_step_loss` -- the training task ``config.training.task = 'classifier'``
  (chosen by :func:`losses.get_step_loss`).

Noise labels (:func:`noise_labels`) follow the continuous-time convention of the score networks
(``models.get_score_fn``): σ(t) for the VE SDE (the official classifier embeds log σ), 999 t for
VP / sub-VP.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde_jax import analytic, sde_lib
from score_sde_jax.models import utils as mutils
from score_sde_jax.sde_lib import batch_mul

Array = jax.Array
LogitFn = Callable[[Array, Array], Array]


def noise_labels(sde: sde_lib.SDE, t: Array) -> Array:
    """The classifier's conditioning label for times t (B,): σ(t) (VE) or 999 t (VP, sub-VP)."""
    if isinstance(sde, sde_lib.VESDE):
        return sde.marginal_prob(jnp.zeros_like(t), t)[1]
    if isinstance(sde, sde_lib.VPSDE):
        return 999.0 * t
    raise ValueError(f"noise_labels: unsupported SDE {type(sde).__name__}")


def get_logit_fn(sde: sde_lib.SDE, model: nn.Module, variables: dict, train: bool = False,
                 rng: Array | None = None) -> LogitFn:
    """``logit_fn(x, t) -> (B, n_classes)``: the network applied to (x, noise_labels(t))."""
    model_fn = mutils.get_model_fn(model, variables, train=train, rng=rng)
    return lambda x, t: model_fn(x, noise_labels(sde, t))


def classifier_logp_fn(model: nn.Module, variables: dict, sde: sde_lib.SDE) -> LogitFn:
    """``logp(x, t) -> (B, n_classes)`` = log_softmax of the trained classifier's logits."""
    logit_fn = get_logit_fn(sde, model, variables)
    return lambda x, t: jax.nn.log_softmax(logit_fn(x, t), axis=-1)


def get_classifier_loss_fn(sde: sde_lib.SDE, eps: float = 1e-5):
    """``loss(rng, logit_fn, x0, y) -> (mean cross-entropy, accuracy)``.

    x0: (B, *D) data (already scaled), y: (B,) integer classes. t ~ U(ε, T), z ~ N(0, I),
    x_t = mean_t(x0) + std_t z; ℓ = −log softmax(logit_fn(x_t, t))[y], averaged over the batch.
    Its minimizer over all functions is the Bayes posterior p_t(y | x_t).
    """

    def loss_fn(rng: Array, logit_fn: LogitFn, x0: Array, y: Array) -> tuple[Array, Array]:
        if y.shape != x0.shape[:1]:
            raise ValueError(f"classifier training needs one label per example: labels {y.shape} "
                             f"for data {x0.shape}")
        rng_t, rng_z = jax.random.split(rng)
        t = jax.random.uniform(rng_t, x0.shape[:1], minval=eps, maxval=sde.T)
        mean, std = sde.marginal_prob(x0, t)
        x_t = mean + batch_mul(std, jax.random.normal(rng_z, x0.shape))
        logp = jax.nn.log_softmax(logit_fn(x_t, t), axis=-1)
        y = y.astype(jnp.int32)
        ce = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        acc = jnp.mean((jnp.argmax(logp, axis=-1) == y).astype(jnp.float32))
        return jnp.mean(ce), acc

    return loss_fn


def mixture_class_logp_fn(mixture: analytic.GaussianMixture, sde: sde_lib.SDE) -> LogitFn:
    """Exact log p_t(y = k | x) for the components k of ``mixture``: (x (B, D), t (B,)) -> (B, K).

    log p_t(k | x) = log w_k + log N(x; m_t μ_k, m_t² Σ_k + std_t² I) − log p_t(x).
    """
    per_component = [
        analytic.GaussianMixture(jnp.ones(1), mixture.means[k:k + 1], mixture.covs[k:k + 1])
        .log_prob_t(sde) for k in range(mixture.means.shape[0])]
    log_w = jnp.log(mixture.weights)

    def logp(x: Array, t: Array) -> Array:
        comp = jnp.stack([f(x, t) for f in per_component], axis=-1) + log_w
        return jax.nn.log_softmax(comp, axis=-1)

    return logp


def get_classifier_step_loss(config, sde: sde_lib.SDE, model: nn.Module, train: bool):
    """Training task 'classifier' (``losses.get_step_loss``): ``loss(params, rng, batch) ->
    (cross-entropy, {'accuracy'})``.

    Reads ``batch['image']`` (scaled data, (B, *D)) and ``batch['label']`` (B,), and
    ``config.training.eps`` (smallest t).
    """
    loss_fn = get_classifier_loss_fn(sde, float(config.training.eps))

    def loss(params: dict, rng: Array, batch) -> tuple[Array, dict]:
        if "label" not in batch:
            raise ValueError("config.training.task='classifier' needs labelled data: the batch "
                             "has no 'label'")
        rng_loss, rng_dropout = jax.random.split(rng)
        logit_fn = get_logit_fn(sde, model, {"params": params}, train,
                                rng_dropout if train else None)
        ce, acc = loss_fn(rng_loss, logit_fn, batch["image"], batch["label"])
        return ce, {"accuracy": acc}

    return loss
