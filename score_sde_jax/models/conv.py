"""3×3 SAME stride-1 convolution whose kernel gradient on CPU is one GEMM.

XLA:CPU computes the weight gradient of a 3×3 convolution at 32×32 resolution as a convolution
whose window is the whole image and whose contraction per window tap is the batch: ~4× the time
of the forward convolution (BENCHMARKS.md §10). The same gradient as one matrix product of the
input with the nine shifted copies of the output cotangent runs at GEMM speed.

``conv_general_dilated`` is a drop-in for ``lax.conv_general_dilated`` (flax's ``nn.Conv``
takes it as its ``conv_general_dilated`` attribute): the forward value is the native
convolution's; a ``custom_jvp`` (forward-mode ``jvp`` through the network — the likelihood —
must keep working, so no ``custom_vjp``) writes the tangent in the kernel as a GEMM followed by
nine shifts, whose transpose is the GEMM kernel gradient. Tangents in the input stay native
convolutions; a zero kernel tangent (forward-mode jvp in the input only) costs nothing. The
GEMM form is chosen on CPU only (``lax.platform_dependent``) and only for shapes where it was
measured to be faster; elsewhere, and on GPU / TPU, everything is the native convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_DIMS = ("NHWC", "HWIO", "NHWC")
# Where the CPU GEMM kernel gradient is used: H·W ≥ 32×32 and ≥ 64 input channels. Measured
# (batch 8, one core, kernel gradient alone, XLA:CPU's own → this): 32×32 128→128 66 → 28 ms,
# 256→128 138 → 40 ms, 128→3 4.9 → 0.5 ms; but 32×32 3→128 2.4 → 17.6 ms, and at 16×16 and
# below mostly slower (256→256 18.6 → 19.4 ms, 128→256 9.3 → 13.1 ms, 8×8 4.1 → 4.7 ms).
MIN_PIXELS = 32 * 32
MIN_CHANNELS = 64


def _native(x, w, precision=None):
    p = w.shape[0] // 2
    return lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=_DIMS,
                                    precision=precision)


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


def _col2im_tangent(x, w_dot):
    """The kernel tangent conv(x, w_dot) as Σ_k shift_k(x @ w_dot[k]): one GEMM
    (B·H·W, C) @ (C, 9·O), split into the nine taps, each shifted into place and summed. Its
    transpose (the kernel gradient) builds the nine shifts from the output cotangent (so they
    exist only in the backward pass, next to their GEMM) and multiplies them with x in one
    (9·O, B·H·W) @ (B·H·W, C) GEMM, XLA:CPU's fast orientation; the barrier keeps XLA from
    folding the final transpose back into the dot."""
    b, h, w, c = x.shape
    o = w_dot.shape[-1]
    w2 = lax.optimization_barrier(jnp.swapaxes(w_dot, 2, 3).reshape(9 * o, c))  # (9O, C)
    z = lax.dot_general(x.reshape(b * h * w, c), w2, (((1,), (1,)), ((), ())))  # (BHW, 9O)
    taps = lax.split(z.reshape(b, h, w, 9 * o), [o] * 9, axis=3)
    out = None
    for k, tap in enumerate(taps):
        kh, kw = divmod(k, 3)
        shifted = jnp.pad(tap, ((0, 0), (1, 1), (1, 1), (0, 0)))[:, kh:kh + h, kw:kw + w]
        out = shifted if out is None else out + shifted
    return out


def _kernel_tangent(x, w_dot, precision):
    native = lambda x, w_dot: _native(x, w_dot, precision)  # noqa: E731
    if (x.shape[1] * x.shape[2] < MIN_PIXELS or not _fast_cpu(x, w_dot)
            or precision not in (None, lax.Precision.DEFAULT)):
        return native(x, w_dot)
    if w_dot.shape[0] == 1:
        cpu = lambda x, w_dot: _dense_tangent(x, w_dot[0, 0])  # noqa: E731
    else:
        cpu = _col2im_tangent
    return lax.platform_dependent(x, w_dot, cpu=cpu, default=native)


def _conv3x3(x, w, precision):
    return _native(x, w, precision)


_conv3x3 = jax.custom_jvp(_conv3x3, nondiff_argnums=(2,))


def _conv3x3_jvp(precision, primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    y = _conv3x3(x, w, precision)
    parts = []
    if not isinstance(x_dot, SymbolicZero):
        parts.append(_native(x_dot, w, precision))
    if not isinstance(w_dot, SymbolicZero):
        parts.append(_kernel_tangent(x, w_dot, precision))
    return y, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)


_conv3x3.defjvp(_conv3x3_jvp, symbolic_zeros=True)


def _same_3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count) -> bool:
    """A 3×3 SAME or a 1×1 (zero padding) stride-1 NHWC / HWIO convolution."""
    if lhs.ndim != 4 or rhs.shape[:2] not in ((3, 3), (1, 1)):
        return False
    p = rhs.shape[0] // 2
    pads = padding == "SAME" or (p == 0 and padding == "VALID") or (
        not isinstance(padding, str) and [tuple(q) for q in padding] == [(p, p), (p, p)])
    return (tuple(window_strides) == (1, 1) and pads
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and dimension_numbers is not None and feature_group_count == 1
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMS))


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``; a 3×3 SAME stride-1 NHWC/HWIO convolution goes through
    the custom-derivative form above (same values), everything else to lax directly."""
    if (batch_group_count == 1 and preferred_element_type is None
            and _same_3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                          dimension_numbers, feature_group_count)):
        return _conv3x3(lhs, rhs, precision)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
