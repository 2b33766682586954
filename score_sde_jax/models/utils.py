"""Model registry and the map from a network to a score function (SPEC §2).

Each network module registers its class with :func:`register_model`; ``models/__init__.py``
imports every one of them explicitly, so ``config.model.name`` finds it once the package is
imported.

A model is a Flax module with a single field ``config`` and
``__call__(x: (B, H, W, C) or (B, D), labels: (B,), train: bool)``; ``labels`` are the noise
levels / time steps. Label-conditional models (``config.model.num_classes`` = K > 0; NCSN++,
DDPM++, DDPM, the toy MLP) also take ``class_labels: (B,)`` int in {0, ..., K}: class k < K, or
K, the "null" label of classifier-free guidance (the default when ``class_labels`` is None).
Their class embedding e_y (an ``nn.Embed`` of K + 1 rows, :func:`class_embedding`) is added
to the time embedding. With K = 0 the networks and their parameter trees are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde_jax import prng, sde_lib

Array = jax.Array
_MODELS: dict[str, type[nn.Module]] = {}
# Score networks that take ``class_labels`` when config.model.num_classes > 0.
CLASS_CONDITIONAL_MODELS = ("ncsnpp", "ddpm", "mlp")


def register_model(cls=None, *, name: str | None = None):
    """Class decorator: ``@register_model(name='ncsnpp')`` makes ``config.model.name`` find it."""

    def _register(c):
        key = name or c.__name__
        if key in _MODELS and _MODELS[key] is not c:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = c
        return c

    return _register if cls is None else _register(cls)


def get_model(config) -> nn.Module:
    """The module named ``config.model.name``, built from ``config``."""
    name = config.model.name
    if name not in _MODELS:
        raise ValueError(f"config.model.name={name!r} is not a known model; known: {sorted(_MODELS)}")
    return _MODELS[name](config=config)


def is_flat(config) -> bool:
    """True for flat data (``config.data.dim`` set, e.g. 2-D toy points), False for images."""
    return bool(config.data.get("dim", None))


def data_shape(config) -> tuple[int, ...]:
    """Shape of one datum: ``(config.data.dim,)`` for flat data, else (H, W, C)."""
    if config.data.get("dim", None):
        return (int(config.data.dim),)
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def num_classes(config) -> int:
    """K = ``config.model.num_classes`` of a label-conditional score network (0: unconditional);
    class labels run over {0, ..., K − 1} and K is the null label."""
    k = config.model.get("num_classes", 0) or 0
    if k and config.model.name not in CLASS_CONDITIONAL_MODELS:
        raise ValueError(f"config.model.num_classes={k}: class-conditional score networks are "
                         f"{CLASS_CONDITIONAL_MODELS}, not config.model.name={config.model.name!r}")
    return int(k)


def class_embedding(config, temb: Array | None, class_labels: Array | None, batch: int,
                    features: int) -> Array | None:
    """temb + e_y (call inside a compact module): e = ``nn.Embed(K + 1, features)`` named
    'class_embed', y = ``class_labels`` (B,) or the null label K for all when None.
    With K = 0, ``temb`` unchanged (``class_labels`` must then be None); temb None -> e_y."""
    k = num_classes(config)
    if not k:
        if class_labels is not None:
            raise ValueError("class_labels given to an unconditional network "
                             "(config.model.num_classes = 0)")
        return temb
    if class_labels is None:
        class_labels = jnp.full((batch,), k, jnp.int32)
    if class_labels.shape != (batch,):
        raise ValueError(f"class_labels must have shape {(batch,)}, got {class_labels.shape}")
    dtype = jnp.float32 if temb is None else temb.dtype
    emb = nn.Embed(k + 1, features, dtype=dtype, name="class_embed")(class_labels.astype(jnp.int32))
    return emb if temb is None else temb + emb


def compile_once(fn: Callable, *args) -> Callable:
    """``jax.jit(fn)`` compiled for ``args`` (arrays or ``jax.ShapeDtypeStruct``) for a program
    that runs once or a few times, such as an initialization: on CPU with XLA's backend (LLVM)
    optimizations off, which compiles it ~2-3x faster (2026-12-04: the tiny NCSN++'s
    ``init_model`` 5.3 -> 2.3 s) for a run time that does not matter."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def init_model(rng: Array, config, batch_size: int = 1) -> dict:
    """Initial variables of ``get_model(config)`` for inputs of ``data_shape(config)``: traced
    under a transformation (``jax.eval_shape``, ``jax.jit``), else one :func:`compile_once`
    computation (op by op, each of the hundreds of initializers and layers would compile its
    own small programs: the tiny NCSN++ took 11 s)."""
    if not isinstance(rng, jax.core.Tracer):
        return compile_once(lambda key: init_model(key, config, batch_size), rng)(rng)
    model = get_model(config)
    x = jnp.zeros((batch_size, *data_shape(config)), jnp.float32)
    labels = jnp.ones((batch_size,), jnp.int32)  # label 0 would be log(0) for Fourier embeddings
    rng_params, rng_dropout = jax.random.split(rng)
    return model.init({"params": rng_params, "dropout": rng_dropout}, x, labels, train=False)


def get_model_fn(
    model: nn.Module, variables: dict, train: bool = False, rng: Array | None = None
) -> Callable[..., Array]:
    """``model_fn(x, labels, class_labels=None)``: the raw network output; dropout uses ``rng``
    when training: one key for the batch, or one key per example ((B, 2): example b's masks
    are those of a batch of one with key b, drawn inside the one batched call,
    :func:`prng.batch_key`). ``class_labels`` (B,) reach a label-conditional network (module docstring);
    None calls the network as an unconditional one does (a conditional one then sees the null
    label)."""
    if train and rng is None:
        raise ValueError("get_model_fn(train=True) needs an rng for dropout")
    if train and prng.per_example(rng):
        rng = prng.batch_key(rng)

    def model_fn(x: Array, labels: Array, class_labels: Array | None = None) -> Array:
        rngs = {"dropout": rng} if train else {}
        extra = {} if class_labels is None else {"class_labels": class_labels}
        return model.apply(variables, x, labels, train=train, rngs=rngs, **extra)

    return model_fn


def get_score_fn(
    sde: sde_lib.SDE,
    model: nn.Module,
    variables: dict,
    train: bool = False,
    continuous: bool = False,
    rng: Array | None = None,
    class_labels: Array | None = None,
) -> Callable[..., Array]:
    """``score_fn(x, t, y=None)`` of a network trained for ``sde`` (SPEC §2).

    Samplers call ``score_fn(x, t)``. For a label-conditional network the class labels (B,)
    are the call's third argument y, else the ``class_labels`` given here (closed over: the
    conditional score s(x, t, c) as an ordinary ``score_fn(x, t)``), else the null label.

    - VP / sub-VP, continuous (sub-VP always): label 999 t, score = −ε̂ / std(t).
    - VP discrete: label t (N−1), score = −ε̂ / √(1 − ᾱ_⌊t(N−1)⌋).
    - VE continuous: label σ(t), the network outputs the score.
    - VE discrete: label round((T − t)(N − 1)), an index into the descending σ table.
    """
    model_fn = get_model_fn(model, variables, train=train, rng=rng)

    if isinstance(sde, sde_lib.VPSDE):  # subVPSDE is a VPSDE

        def score_fn(x, t, y=None):
            y = class_labels if y is None else y
            if continuous or isinstance(sde, sde_lib.subVPSDE):
                labels = t * 999
                std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = t * (sde.N - 1)
                std = sde.sqrt_1m_alphas_cumprod[labels.astype(jnp.int32)]
            return sde_lib.batch_mul(-1.0 / std, model_fn(x, labels, y))

    elif isinstance(sde, sde_lib.VESDE):

        def score_fn(x, t, y=None):
            y = class_labels if y is None else y
            if continuous:
                labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
            return model_fn(x, labels, y)

    else:
        raise ValueError(f"get_score_fn: unsupported SDE {type(sde).__name__}")
    return score_fn
