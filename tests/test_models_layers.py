"""models/layers.py: GroupNorm's own computation against flax's ``nn.GroupNorm``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
