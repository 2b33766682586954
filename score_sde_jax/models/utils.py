"""Model registry and the map from a network to a score function (SPEC §2).

A model is a Flax module with a single field ``config`` and
``__call__(x: (B, H, W, C) or (B, D), labels: (B,), train: bool)``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde_jax import prng, sde_lib

Array = jax.Array
_MODELS: dict[str, type[nn.Module]] = {}
_MODEL_MODULES = ("ncsnpp", "ddpm", "ncsnv2", "mlp", "wideresnet", "mlp_classifier")


def register_model(cls=None, *, name: str | None = None):
    """Class decorator: ``@register_model(name='ncsnpp')`` makes ``config.model.name`` find it."""

    def _register(c):
        key = name or c.__name__
        if key in _MODELS and _MODELS[key] is not c:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = c
        return c

    return _register if cls is None else _register(cls)


def _import_model_modules() -> None:
    for mod in _MODEL_MODULES:
        full = f"score_sde_jax.models.{mod}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full)


def get_model(config) -> nn.Module:
    """The module named ``config.model.name``, built from ``config``."""
    _import_model_modules()
    name = config.model.name
    if name not in _MODELS:
        raise ValueError(f"config.model.name={name!r} is not a known model; known: {sorted(_MODELS)}")
    return _MODELS[name](config=config)


def data_shape(config) -> tuple[int, ...]:
    """Shape of one datum: ``(config.data.dim,)`` for flat data, else (H, W, C)."""
    if config.data.get("dim", None):
        return (int(config.data.dim),)
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def init_model(rng: Array, config, batch_size: int = 1) -> dict:
    """Initial variables of ``get_model(config)`` for inputs of ``data_shape(config)``."""
    model = get_model(config)
    x = jnp.zeros((batch_size, *data_shape(config)), jnp.float32)
    labels = jnp.ones((batch_size,), jnp.int32)  # label 0 would be log(0) for Fourier embeddings
    rng_params, rng_dropout = jax.random.split(rng)
    return model.init({"params": rng_params, "dropout": rng_dropout}, x, labels, train=False)


def get_model_fn(
    model: nn.Module, variables: dict, train: bool = False, rng: Array | None = None
) -> Callable[[Array, Array], Array]:
    """``model_fn(x, labels)``: the raw network output; dropout uses ``rng`` when training:
    one key for the batch, or one key per example ((B, 2): example b's masks are those of a
    batch of one with key b, drawn inside the one batched call, :func:`prng.batch_key`)."""
    if train and rng is None:
        raise ValueError("get_model_fn(train=True) needs an rng for dropout")
    if train and prng.per_example(rng):
        rng = prng.batch_key(rng)

    def model_fn(x: Array, labels: Array) -> Array:
        rngs = {"dropout": rng} if train else {}
        return model.apply(variables, x, labels, train=train, rngs=rngs)

    return model_fn


def get_score_fn(
    sde: sde_lib.SDE,
    model: nn.Module,
    variables: dict,
    train: bool = False,
    continuous: bool = False,
    rng: Array | None = None,
) -> Callable[[Array, Array], Array]:
    """``score_fn(x, t)`` of a network trained for ``sde`` (SPEC §2).

    - VP / sub-VP, continuous (sub-VP always): label 999 t, score = −ε̂ / std(t).
    - VP discrete: label t (N−1), score = −ε̂ / √(1 − ᾱ_⌊t(N−1)⌋).
    - VE continuous: label σ(t), the network outputs the score.
    - VE discrete: label round((T − t)(N − 1)), an index into the descending σ table.
    """
    model_fn = get_model_fn(model, variables, train=train, rng=rng)

    if isinstance(sde, sde_lib.VPSDE):  # subVPSDE is a VPSDE

        def score_fn(x, t):
            if continuous or isinstance(sde, sde_lib.subVPSDE):
                labels = t * 999
                std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = t * (sde.N - 1)
                std = sde.sqrt_1m_alphas_cumprod[labels.astype(jnp.int32)]
            return sde_lib.batch_mul(-1.0 / std, model_fn(x, labels))

    elif isinstance(sde, sde_lib.VESDE):

        def score_fn(x, t):
            if continuous:
                labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
            return model_fn(x, labels)

    else:
        raise ValueError(f"get_score_fn: unsupported SDE {type(sde).__name__}")
    return score_fn
