"""models/conv.py: the dense (NIN) product with the GEMM kernel gradient on CPU gives
tensordot's values: forward, jvp (in the input, the kernel, both) and grad, to float32 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
from training_helpers import normal

from score_sde_jax.models import conv


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_dense_grad_and_jvp_equal(monkeypatch):
    monkeypatch.setattr(conv, "MIN_CHANNELS", 1)  # the GEMM path on a small shape
    x, x_dot = normal(0, (2, 6, 5, 4)), normal(2, (2, 6, 5, 4))
    w, w_dot = normal(7, (4, 3)), normal(8, (4, 3))
    plain = lambda x, w: jnp.tensordot(x, w, axes=1)  # noqa: E731
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda w: conv.dense(x, w).sum()))(w))
    assert "platform_index" in jaxpr  # the CPU GEMM branch exists
    ct = normal(9, (2, 6, 5, 3))
    got = jax.jit(jax.grad(lambda x, w: jnp.vdot(conv.dense(x, w), ct), argnums=(0, 1)))(x, w)
    want = jax.grad(lambda x, w: jnp.vdot(plain(x, w), ct), argnums=(0, 1))(x, w)
    for a, b in zip(got, want, strict=True):
        _close(a, b)
    for tangents in ((x_dot, w_dot), (x_dot, jnp.zeros_like(w)), (jnp.zeros_like(x), w_dot)):
        for a, b in zip(jax.jvp(conv.dense, (x, w), tangents), jax.jvp(plain, (x, w), tangents),
                        strict=True):
            _close(a, b)
    # Forward mode in the input only (the likelihood's): the kernel tangent is a symbolic zero.
    _close(jax.jvp(lambda x: conv.dense(x, w), (x,), (x_dot,))[1],
           jax.jvp(lambda x: plain(x, w), (x,), (x_dot,))[1])
