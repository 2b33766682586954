"""models/conv.py: the 3×3 / 1×1 convolutions and the dense product with the GEMM kernel
gradient on CPU give lax's values: forward, jvp (in the input, the kernel, both) and grad, to
float32 rounding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from training_helpers import normal

from score_sde_jax.models import conv, layers

DIMS = ("NHWC", "HWIO", "NHWC")


def _lax(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMS)


def _new(x, w):
    return conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMS)


@pytest.fixture
def small(monkeypatch):
    """The GEMM path on small shapes (its thresholds lowered), and inputs (B, 6, 5, 4) -> 3."""
    monkeypatch.setattr(conv, "MIN_PIXELS", 1)
    monkeypatch.setattr(conv, "MIN_CHANNELS", 1)
    x, w = normal(0, (2, 6, 5, 4)), normal(1, (3, 3, 4, 3))
    return x, w, normal(2, x.shape), normal(3, w.shape)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("size", [3, 1])
def test_gemm_path_taken_and_grad_equal(small, size):
    x, w, _, _ = small
    w = w[:size, :size]
    ct = normal(5, (2, 6, 5, 3))
    loss = lambda f: lambda x, w: jnp.vdot(f(x, w), ct)  # noqa: E731
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(_new), argnums=(0, 1)))(x, w))
    assert "platform_index" in jaxpr and "dot_general" in jaxpr  # the CPU GEMM branch exists
    got = jax.jit(jax.grad(loss(_new), argnums=(0, 1)))(x, w)
    want = jax.grad(loss(_lax), argnums=(0, 1))(x, w)
    for a, b in zip(got, want, strict=True):
        _close(a, b)


def test_forward_and_jvp_equal(small):
    x, w, x_dot, w_dot = small
    np.testing.assert_array_equal(np.asarray(_new(x, w)), np.asarray(_lax(x, w)))
    for tangents in ((x_dot, w_dot), (x_dot, jnp.zeros_like(w)), (jnp.zeros_like(x), w_dot)):
        y, t = jax.jit(lambda x, w, a, b: jax.jvp(_new, (x, w), (a, b)))(x, w, *tangents)
        y_ref, t_ref = jax.jvp(_lax, (x, w), tangents)
        _close(y, y_ref)
        _close(t, t_ref)
    # Forward mode in the input only (the likelihood's): the kernel tangent is a symbolic zero.
    _, t = jax.jvp(lambda x: _new(x, w), (x,), (x_dot,))
    _close(t, jax.jvp(lambda x: _lax(x, w), (x,), (x_dot,))[1])


def test_dense_grad_and_jvp_equal(small):
    x, _, x_dot, _ = small
    w, w_dot = normal(7, (4, 3)), normal(8, (4, 3))
    plain = lambda x, w: jnp.tensordot(x, w, axes=1)  # noqa: E731
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: conv.dense(x, w).sum()))(w))
    assert "platform_index" in jaxpr
    ct = normal(9, (2, 6, 5, 3))
    got = jax.jit(jax.grad(lambda x, w: jnp.vdot(conv.dense(x, w), ct), argnums=(0, 1)))(x, w)
    want = jax.grad(lambda x, w: jnp.vdot(plain(x, w), ct), argnums=(0, 1))(x, w)
    for a, b in zip(got, want, strict=True):
        _close(a, b)
    for a, b in zip(jax.jvp(conv.dense, (x, w), (x_dot, w_dot)),
                    jax.jvp(plain, (x, w), (x_dot, w_dot)), strict=True):
        _close(a, b)


def test_other_convolutions_are_plain_lax():
    x = jnp.ones((1, 4, 4, 2))
    for w, strides in ((jnp.ones((3, 3, 2, 2)), (2, 2)), (jnp.ones((5, 5, 2, 2)), (1, 1))):
        jaxpr = str(jax.make_jaxpr(lambda x, w, s=strides: conv.conv_general_dilated(
            x, w, s, "SAME", dimension_numbers=DIMS))(x, w))
        assert "custom_jvp_call" not in jaxpr
    jaxpr = str(jax.make_jaxpr(lambda x: _new(x, jnp.ones((3, 3, 2, 2))))(x))
    assert "custom_jvp_call" in jaxpr


def test_ddpm_conv3x3_uses_it():
    """flax's nn.Conv passes ConvDimensionNumbers, not strings: the 3×3 layer still takes it."""
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layers.ddpm_conv3x3(x, 4)

    x = jnp.ones((1, 4, 4, 2))
    params = Net().init(jax.random.PRNGKey(0), x)
    assert "custom_jvp_call" in str(jax.make_jaxpr(Net().apply)(params, x))
