"""Random draws from one key for the whole batch, or from one key per example.

Every sampler, the likelihood's Hutchinson probes and the evaluation steps draw their noise
through these functions. ``rng`` is either one key (raw ``(2,) uint32`` or a typed key ``()``),
which draws the batch at once exactly as ``jax.random`` does, or a batch of keys (``(B, 2)``
uint32 or typed ``(B,)``), one per example along the leading axis of ``shape``: example b's
noise is then a function of its own key alone, so it does not change with the batch size, the
position of the example in the batch, or the devices the batch is sharded over.

:func:`batch_key` turns a batch of keys into ONE typed key for code that takes a single key
(e.g. a Flax network's ``'dropout'`` rng, used by ``nn.Dropout`` through ``make_rng``): every
``fold_in`` / ``split`` acts on each example's key, and a draw of shape (B, ...) gives row b
exactly the draw of shape (1, ...) from key b alone. So one batched network call with per-example
dropout masks equals B calls on batches of one, each with its own key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.extend.random
import jax.numpy as jnp

Array = jax.Array


def per_example(rng: Array) -> bool:
    """True when ``rng`` is a batch of keys (leading axis = the batch)."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return rng.ndim == (1 if typed else 2)


def example_keys(rng: Array, indices: Array) -> Array:
    """One key per example: ``fold_in(rng, i)`` for each i of ``indices`` (B,) -> (B, 2)."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(indices, jnp.uint32))


def _draw(fn, rng: Array, shape: Sequence[int], dtype) -> Array:
    if not per_example(rng):
        return fn(rng, tuple(shape), dtype)
    if shape[0] != rng.shape[0]:
        raise ValueError(f"{rng.shape[0]} per-example keys for a batch of shape {tuple(shape)}")
    return jax.vmap(lambda key: fn(key, tuple(shape[1:]), dtype))(rng)


def normal(rng: Array, shape: Sequence[int], dtype=float) -> Array:
    """Standard normal of ``shape`` (one key, or one key per example of ``shape[0]``)."""
    return _draw(jax.random.normal, rng, shape, dtype)


def uniform(rng: Array, shape: Sequence[int], dtype=float, minval=0.0, maxval=1.0) -> Array:
    """U[minval, maxval) of ``shape`` (one key, or one key per example of ``shape[0]``)."""
    return _draw(lambda k, s, d: jax.random.uniform(k, s, d, minval, maxval), rng, shape, dtype)


def randint(rng: Array, shape: Sequence[int], minval: int, maxval: int) -> Array:
    """Integers uniform in [minval, maxval) of ``shape`` (one key, or one per example)."""
    return _draw(lambda k, s, d: jax.random.randint(k, s, minval, maxval), rng, shape, None)


def rademacher(rng: Array, shape: Sequence[int], dtype=float) -> Array:
    """±1 with probability ½ each, of ``shape`` (one key, or one per example).

    The signs come from float32 uniforms whatever ``jax_enable_x64`` says (the same draws as
    ``jax.random.rademacher`` without x64), so a float64 run uses the float32 run's probes.
    """
    def draw(key, s, d):
        return (2 * jax.random.bernoulli(key, jnp.float32(0.5), s).astype(jnp.int32) - 1).astype(d)

    return _draw(draw, rng, shape, dtype)


def split(rng: Array, num: int = 2) -> Array:
    """``jax.random.split``; for per-example keys (B, ...) each is split: (num, B, ...)."""
    if not per_example(rng):
        return jax.random.split(rng, num)
    return jnp.swapaxes(jax.vmap(lambda key: jax.random.split(key, num))(rng), 0, 1)


def fold_in(rng: Array, data: int) -> Array:
    """``jax.random.fold_in`` of one key, or of each per-example key."""
    if not per_example(rng):
        return jax.random.fold_in(rng, data)
    return jax.vmap(lambda key: jax.random.fold_in(key, data))(rng)


_BATCH_IMPLS: dict[int, object] = {}
_BITS = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 block cipher, 20 rounds (Salmon et al., SC 2011), of the uint32
    counters (x0, x1) under the key (k0, k1), all broadcast together, as plain elementwise jnp
    operations: XLA fuses the 20 rounds into the kernel that uses the bits. (JAX lowers its own
    threefry on CPU as a rolled loop of 5 iterations, each a pass over the arrays; written out,
    the full DDPM++ and NCSN++ train steps with their per-example dropout masks are ~8 %
    faster on CPU, and compile faster.)"""
    def rotl(v: Array, r: int) -> Array:
        return (v << jnp.uint32(r)) | (v >> jnp.uint32(32 - r))

    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = rotl(x1, r) ^ x0
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _per_example_bits(data: Array, bit_width: int, shape: tuple[int, ...]) -> Array:
    """Row b = ``jax.random.bits(key b, shape)`` for the (B, 2) keys ``data`` (threefry, the
    partitionable counters: the flat index of each element, its high word 0 below 2³²)."""
    if not jax.config.jax_threefry_partitionable or math.prod(shape) >= 2 ** 32:
        return jax.vmap(lambda k: jax.random.bits(_threefry(k), shape, _BITS[bit_width]))(data)
    keys = data.reshape(data.shape[:1] + (1,) * len(shape) + (2,))
    counts = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    hi, lo = threefry2x32(keys[..., 0], keys[..., 1], jnp.zeros_like(counts), counts)
    if bit_width == 64:
        return (hi.astype(jnp.uint64) << jnp.uint64(32)) | lo.astype(jnp.uint64)
    return (hi ^ lo).astype(_BITS[bit_width])


def _threefry(data: Array) -> Array:
    return jax.random.wrap_key_data(data, impl="threefry2x32")


def _batch_impl(size: int):
    """The PRNG implementation whose one key is ``size`` threefry keys, (size, 2) uint32."""
    if size in _BATCH_IMPLS:
        return _BATCH_IMPLS[size]

    def seed(s: Array) -> Array:
        return jax.random.key_data(jax.random.split(_threefry(jax.random.PRNGKey(s)), size))

    def split(data: Array, shape: tuple[int, ...]) -> Array:  # (size, 2) -> (*shape, size, 2)
        out = jax.vmap(lambda k: jax.random.key_data(jax.random.split(_threefry(k), shape)))(data)
        return jnp.moveaxis(out, 0, len(shape))

    def fold_in(data: Array, value: Array) -> Array:
        # jax.random.fold_in(key, d) = threefry(key, counters (0, d)), here written out: JAX's
        # own is a rolled loop on CPU, a while loop in a call of its own for every Flax module
        # that asks for a key (44 dropout layers in the CIFAR-10 DDPM++ train step)
        d = jnp.asarray(value).astype(jnp.uint32)
        hi, lo = threefry2x32(data[:, 0], data[:, 1], jnp.zeros_like(d), d)
        return jnp.stack([hi, lo], axis=1)

    def random_bits(data: Array, bit_width: int, shape: tuple[int, ...]) -> Array:
        if not shape or shape[0] != size:
            raise ValueError(f"a key of {size} per-example keys draws shapes ({size}, ...), "
                             f"not {tuple(shape)}")
        return _per_example_bits(data, bit_width, tuple(shape[1:]))

    impl = jax.extend.random.define_prng_impl(
        key_shape=(size, 2), seed=seed, split=split, random_bits=random_bits, fold_in=fold_in,
        name=f"per_example_threefry2x32_{size}", tag=f"pe{size}")
    _BATCH_IMPLS[size] = impl
    return impl


def batch_key(rng: Array) -> Array:
    """One typed key () holding the B per-example threefry keys of ``rng`` ((B, 2) uint32 or
    typed (B,)): ``fold_in(key, d)`` folds d into each, ``split`` splits each, and a draw of
    shape (B, ...) (``jax.random.bernoulli``, ``normal``, ...) is, row b, the draw of shape
    (1, ...) from key b alone (the same bits: threefry draws depend on the element count only).
    The draws run inside the one batched computation: :func:`threefry2x32` on every example's
    counters at once, fused by XLA into the kernel that uses them."""
    if not per_example(rng):
        raise ValueError(f"batch_key takes a batch of keys, got shape {rng.shape}")
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(rng)) != "threefry2x32":
            raise ValueError(f"batch_key supports threefry2x32 keys, not {jax.random.key_impl(rng)}")
        rng = jax.random.key_data(rng)
    return jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32), impl=_batch_impl(rng.shape[0]))
