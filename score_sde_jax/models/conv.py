"""The NIN product x @ w whose kernel gradient on CPU is computed in XLA:CPU's fast orientation.

``dense(x, w)`` is ``jnp.tensordot(x, w, axes=1)`` (x (..., C) @ w (C, O), the NIN layers of
attention and the BigGAN skips) with the same forward value; a ``custom_jvp`` (forward-mode
``jvp`` through the network — the likelihood — keeps working, so no ``custom_vjp``) writes the
tangent in the kernel so that its transpose, the weight gradient, is cotangentᵀ @ x with (O, C)
output behind an ``optimization_barrier``: otherwise XLA:CPU transposes the cotangent first and
fuses that transpose into the elementwise chain producing it. The GEMM form is chosen on CPU only
(``lax.platform_dependent``), in float32, with ≥ 64 input channels; elsewhere, and on GPU / TPU,
it is the plain product.

The convolutions are XLA's own, forward and backward. Until 2026-12-04 the 3×3 SAME and the 1×1
convolutions had the same kind of GEMM kernel gradient (nine shifted copies of the cotangent
times x); on an idle machine the full CIFAR-10 train steps were faster without it (DDPM++ 3.91 →
3.76 s, NCSN++ 4.05 → 3.83 s, pinned to one core, interleaved in one process) and compiled ~4 s
faster (BENCHMARKS.md §10, "The convolutions' own kernel gradients again").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

# ≥ 64 input channels: the GEMM form of the kernel gradient (XLA's product otherwise).
MIN_CHANNELS = 64


def _dense_tangent(x, w_dot):
    """x @ w_dot over x's last axis, laid out so that its transpose (the weight gradient) is
    cotangentᵀ @ x with (O, C) output: XLA:CPU otherwise transposes the cotangent first, and
    fuses that transpose into the elementwise chain that produces it (~50–120 ms for a 2 MB
    (B·H·W, C) at 16×16 in the full network, against ~2 ms for the product itself)."""
    c, o = w_dot.shape
    w_t = lax.optimization_barrier(w_dot.T)                                   # (O, C)
    y = lax.dot_general(x.reshape(-1, c), w_t, (((1,), (1,)), ((), ())))  # (N, O)
    return y.reshape(*x.shape[:-1], o)


def _plain_dense(x, w):
    return jnp.tensordot(x, w, axes=1)


def _fast_cpu(x, w_dot) -> bool:
    return (x.dtype == jnp.float32 and w_dot.dtype == jnp.float32
            and x.shape[-1] >= MIN_CHANNELS)


@jax.custom_jvp
def dense(x, w):
    """``jnp.tensordot(x, w, axes=1)`` (x (..., C) @ w (C, O)) whose weight gradient on CPU is
    computed in the orientation XLA:CPU runs without transposing the cotangent (same values)."""
    return _plain_dense(x, w)


def _dense_jvp(primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    parts = []
    if not isinstance(x_dot, SymbolicZero):
        parts.append(_plain_dense(x_dot, w))
    if not isinstance(w_dot, SymbolicZero):
        parts.append(lax.platform_dependent(x, w_dot, cpu=_dense_tangent, default=_plain_dense)
                     if _fast_cpu(x, w_dot) else _plain_dense(x, w_dot))
    y = _plain_dense(x, w)
    return y, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)


dense.defjvp(_dense_jvp, symbolic_zeros=True)
