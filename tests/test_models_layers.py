"""models/layers.py: GroupNorm's own computation against flax's ``nn.GroupNorm``; the
materialized residual sums (the identity, computed once by XLA:CPU)."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde_jax import prng
from score_sde_jax.models import layers


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 16), 4), ((3, 5, 12), 3), ((2, 4, 4, 8), 8)])
def test_group_norm_equals_flax_values_and_gradients(x64, shape, groups):
    """Same outputs and gradients (in x, scale, bias) as ``nn.GroupNorm`` in float64, on data
    with a mean offset (the one-pass variance and y = x·a + b form round differently only)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(3.0 + 0.5 * rng.standard_normal(shape))
    c = shape[-1]
    scale, bias = jnp.asarray(rng.uniform(0.5, 2, c)), jnp.asarray(rng.standard_normal(c))
    cot = jnp.asarray(rng.standard_normal(shape))
    flax_gn = nn.GroupNorm(num_groups=groups, epsilon=1e-6)

    def ours(x, s, b):
        return jnp.vdot(layers.group_norm_apply(x, s, b, groups), cot)

    def theirs(x, s, b):
        return jnp.vdot(flax_gn.apply({"params": {"scale": s, "bias": b}}, x), cot)

    y = jax.jit(layers.group_norm_apply, static_argnums=3)(x, scale, bias, groups)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, jax.jit(flax_gn.apply)({"params": {"scale": scale, "bias": bias}}, x),
                               rtol=1e-10, atol=1e-10)
    for g1, g2 in zip(jax.jit(jax.grad(ours, (0, 1, 2)))(x, scale, bias),  # jit: one program,
                      jax.jit(jax.grad(theirs, (0, 1, 2)))(x, scale, bias), strict=True):  # not ~70
        np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9)


def test_group_norm_float32_close_to_the_float64_truth(x64):
    """float32 input with mean/std = 10: within 1e-4 of the float64 result (as nn.GroupNorm)."""
    rng = np.random.default_rng(1)
    x = 10.0 + rng.standard_normal((2, 8, 8, 32))
    scale, bias = np.ones(32), np.zeros(32)
    truth = np.asarray(layers.group_norm_apply(jnp.asarray(x), scale, bias, 8))
    y32 = layers.group_norm_apply(jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32),
                                  jnp.asarray(bias, jnp.float32), 8)
    flax32 = nn.GroupNorm(num_groups=8, epsilon=1e-6).apply(
        {"params": {"scale": jnp.ones(32, jnp.float32), "bias": jnp.zeros(32, jnp.float32)}},
        jnp.asarray(x, jnp.float32))
    assert y32.dtype == jnp.float32
    ours, theirs = np.abs(np.asarray(y32) - truth).max(), np.abs(np.asarray(flax32) - truth).max()
    assert ours < 1e-4 and ours <= 2 * theirs + 1e-6, (ours, theirs)


def _chain(x, n, mat):
    """n residual steps h <- (h + sin(h)) / sqrt(2), each h also summed: every h has two consumers."""
    total = 0.0
    for _ in range(n):
        x = layers.residual(x, jnp.sin(x), True) if mat else (x + jnp.sin(x)) / math.sqrt(2.0)
        total = total + jnp.sum(x * x)
    return total


def test_materialize_is_the_identity_in_value_and_derivatives():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 4, 5)), jnp.float32)
    for fn in (jax.jit(layers.materialize), jax.vmap(layers.materialize)):
        np.testing.assert_array_equal(fn(x), x)
    nan = x.at[0, 0, 0].set(jnp.nan)  # the predicate's false branch: still x
    np.testing.assert_array_equal(jax.jit(layers.materialize)(nan), nan)
    bf16 = x.astype(jnp.bfloat16)
    assert jax.jit(layers.materialize)(bf16).dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.jit(layers.materialize)(bf16), bf16)
    # grad, jvp and a second derivative go through it unchanged (the likelihood uses jvp).
    f = lambda x: jnp.sum(jnp.sin(layers.materialize(x * x)))  # noqa: E731
    g = lambda x: jnp.sum(jnp.sin(x * x))  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.grad(g)(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jvp(f, (x,), (x,))[1], jax.jvp(g, (x,), (x,))[1], rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(jax.grad(f)(x)))(x),
                               jax.grad(lambda x: jnp.sum(jax.grad(g)(x)))(x), rtol=1e-5, atol=1e-5)
    for other in (x > 0, jnp.arange(6, dtype=jnp.int32)):  # a dropout mask; integers
        out = jax.jit(layers.materialize)(other)
        assert out.dtype == other.dtype
        np.testing.assert_array_equal(out, other)
    assert layers.materialize(jnp.zeros((0, 3))).shape == (0, 3)


def test_residual_chain_is_computed_once_on_cpu():
    """XLA:CPU duplicates a cheap elementwise producer into each of its consumers: along a chain
    of residual sums with two consumers each, the plain chain's compiled program recomputes the
    earlier steps (sines: 27, 90, 324 for 6, 12, 24 steps); the materialized one computes each
    step's sine at most twice (2n), with the same values and gradients."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 8, 8, 16)), jnp.float32)
    n = 12

    def sines(mat):
        hlo = jax.jit(jax.value_and_grad(_chain), static_argnums=(1, 2)).lower(x, n, mat)
        return len(re.findall(r"= f32\[[^]]*\][^ ]* sine\(", hlo.compile().as_text()))

    assert sines(True) <= 2 * n, sines(True)
    assert sines(False) > 4 * n, sines(False)  # the duplication this works around
    v1, g1 = jax.jit(jax.value_and_grad(_chain), static_argnums=(1, 2))(x, n, True)
    v2, g2 = jax.jit(jax.value_and_grad(_chain), static_argnums=(1, 2))(x, n, False)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_example", [False, True])
def test_dropout_equals_flax_dropout(per_example):
    """layers.Dropout (its mask materialized) draws nn.Dropout's mask from the same key, one key
    or a batch of per-example keys (``prng.batch_key``, as the training loss passes them)."""
    x = jnp.asarray(np.random.default_rng(4).standard_normal((4, 6, 6, 8)), jnp.float32)
    key = jax.random.PRNGKey(5)
    if per_example:
        key = prng.batch_key(jax.random.split(key, 4))
    outs = [jax.jit(lambda x, k, cls=cls: cls(0.3).apply({}, x, deterministic=False,
                                                         rngs={"dropout": k}))(x, key)
            for cls in (layers.Dropout, nn.Dropout)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert 0.5 < float(jnp.mean(outs[0] != 0)) < 0.9  # ~70 % kept
    np.testing.assert_array_equal(layers.Dropout(0.3).apply({}, x, deterministic=True), x)
