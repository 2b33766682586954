"""FIR resampling of NHWC images (the StyleGAN2 operations used by NCSN++).

All functions take and return NHWC arrays. A FIR kernel ``k`` is either a 1-D sequence
(separable: the 2-D kernel is its outer product) or a square 2-D array; it is normalised to
sum 1 before use (:func:`setup_kernel`).

The central operation is :func:`upfirdn_2d`; for every image and channel it
  1. up-samples by inserting ``up - 1`` zeros after every pixel (H -> H·up),
  2. zero-pads by ``pad0`` before and ``pad1`` after (negative values crop),
  3. convolves (a true convolution: correlation with the flipped kernel) with ``k``, keeping
     the valid part (size H·up + pad0 + pad1 - kH + 1),
  4. keeps every ``down``-th pixel, starting at the first.
The other operations are ``upfirdn_2d`` with particular paddings, optionally fused with a
convolution by ``w`` (HWIO) so that the padding happens only once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Kernel = Sequence[float] | np.ndarray | None
_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Kernel, factor: int = 2) -> np.ndarray:
    """The 2-D FIR kernel (outer product of a 1-D ``k``, default ``[1]*factor``) over its sum."""
    k = np.asarray([1.0] * factor if k is None else k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    return k / np.sum(k)


def _separable(k: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(col, row) with k = outer(col, row) when k has rank one, else None."""
    u, s, vt = np.linalg.svd(np.asarray(k, np.float64))
    if s[0] == 0 or s[1:].max(initial=0.0) > 1e-7 * s[0]:
        return None
    return u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])


def _slice(x: jax.Array, axis: int, start: int, size: int, step: int = 1) -> jax.Array:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + (size - 1) * step + 1, step)
    return x[tuple(index)]


def _pad_axis(x: jax.Array, axis: int, lo: int, hi: int) -> jax.Array:
    """Zero-pad (crop, for negative values) one axis."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (max(lo, 0), max(hi, 0))
    x = jnp.pad(x, widths)
    return _slice(x, axis, max(-lo, 0), x.shape[axis] - max(-lo, 0) - max(-hi, 0))


def _weighted_sum(terms) -> jax.Array:
    terms = [(float(w), t) for w, t in terms if w != 0]
    out = terms[0][0] * terms[0][1]
    for w, t in terms[1:]:
        out = out + w * t
    return out


def _upfirdn_1d(x: jax.Array, taps: np.ndarray, axis: int, up: int, down: int, pad0: int,
                pad1: int) -> jax.Array:
    """upfirdn along one axis as a weighted sum of shifted slices (XLA fuses it into one loop).

    out[i] = Σ_a taps[K-1-a] u[i·down + a], u = the zero-stuffed, padded input. Up-sampling is
    polyphase: output phase r = i mod up only meets the taps that land on input pixels.
    """
    n_taps, length = len(taps), x.shape[axis]
    n_out = (length * up + pad0 + pad1 - n_taps) // down + 1
    flipped = np.asarray(taps, np.float64)[::-1]
    if up == 1:
        x = _pad_axis(x, axis, pad0, pad1)
        return _weighted_sum((flipped[a], _slice(x, axis, a, n_out, down)) for a in range(n_taps))
    if down != 1:  # not used by this package's operations: zero-stuff, then filter
        x = _upfirdn_1d(x, np.ones(1), axis, up, 1, 0, 0)
        return _upfirdn_1d(x, taps, axis, 1, down, pad0, pad1)
    # Phase r, output i = up·q + r, reads tap a at input pixel q + (r + a - pad0) / up.
    n_q = -(-n_out // up)
    shifts = {(r, a): (r + a - pad0) // up for r in range(up) for a in range(n_taps)
              if (r + a - pad0) % up == 0}
    lo = max(0, -min(shifts.values()))
    hi = max(0, n_q - 1 + max(shifts.values()) - (length - 1))
    x = _pad_axis(x, axis, lo, hi)
    phases = []
    for r in range(up):
        terms = [(flipped[a], _slice(x, axis, d + lo, n_q)) for (rr, a), d in shifts.items()
                 if rr == r]
        phases.append(_weighted_sum(terms) if terms else jnp.zeros_like(_slice(x, axis, 0, n_q)))
    y = jnp.stack(phases, axis=axis + 1)
    y = y.reshape(y.shape[:axis] + (n_q * up,) + y.shape[axis + 2 :])
    return _slice(y, axis, 0, n_out)


def upfirdn_2d(
    x: jax.Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0, pad1: int = 0
) -> jax.Array:
    """Pad, up-sample, FIR-filter and down-sample NHWC images (see the module docstring).

    Args:
      x: (N, H, W, C).
      k: (kH, kW) FIR kernel, used as given (not normalised here).
    Returns:
      (N, (H·up + pad0 + pad1 - kH) // down + 1, likewise for W, C).
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn_2d expects NHWC input, got shape {x.shape}")
    k = np.asarray(k, dtype=np.float64)
    factors = _separable(k)
    if factors is not None:  # two 1-D passes
        x = _upfirdn_1d(x, factors[0], 1, up, down, pad0, pad1)
        return _upfirdn_1d(x, factors[1], 2, up, down, pad0, pad1)
    n, h, w, c = x.shape
    if up > 1:  # insert up-1 zeros after every pixel
        x = x.reshape(n, h, 1, w, 1, c)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
        x = x.reshape(n, h * up, w * up, c)
    x = _pad_axis(_pad_axis(x, 1, pad0, pad1), 2, pad0, pad1)
    oh = (x.shape[1] - k.shape[0]) // down + 1
    ow = (x.shape[2] - k.shape[1]) // down + 1
    flipped = k[::-1, ::-1]
    return _weighted_sum(
        (flipped[a, b], _slice(_slice(x, 1, a, oh, down), 2, b, ow, down))
        for a in range(k.shape[0]) for b in range(k.shape[1]))


def upsample_2d(x: jax.Array, k: Kernel = None, factor: int = 2, gain: float = 1.0) -> jax.Array:
    """FIR up-sampling (N, H, W, C) -> (N, H·factor, W·factor, C).

    The kernel is scaled by ``gain · factor²``, so a constant image stays constant (× gain);
    the default ``k = [1] * factor`` is nearest-neighbour up-sampling.
    """
    kk = setup_kernel(k, factor) * (gain * factor**2)
    p = kk.shape[0] - factor
    return upfirdn_2d(x, kk, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: jax.Array, k: Kernel = None, factor: int = 2, gain: float = 1.0) -> jax.Array:
    """FIR down-sampling (N, H, W, C) -> (N, H/factor, W/factor, C).

    The default ``k = [1] * factor`` is average pooling.
    """
    kk = setup_kernel(k, factor) * gain
    p = kk.shape[0] - factor
    return upfirdn_2d(x, kk, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(
    x: jax.Array, w: jax.Array, k: Kernel = None, factor: int = 2, gain: float = 1.0
) -> jax.Array:
    """``upsample_2d(x, k)`` fused with a correlation by ``w`` (HWIO, (kw, kw, C, out)).

    The input is zero-stuffed and correlated with ``w`` over its full support (the transposed
    convolution of stride ``factor``, size (H-1)·factor + max(kw, factor)), then FIR-filtered
    once with the padding that gives H·factor. Away from the border it equals
    ``conv(upsample_2d(x, k), w, 'SAME')``; at the border it keeps the terms that the unfused
    version crops. Returns (N, H·factor, W·factor, out).
    """
    if w.ndim != 4 or w.shape[0] != w.shape[1]:
        raise ValueError(f"upsample_conv_2d needs a square HWIO kernel, got shape {w.shape}")
    kw = w.shape[0]
    kk = setup_kernel(k, factor) * (gain * factor**2)
    p = (kk.shape[0] - factor) - (kw - 1)
    lo, hi = kw - 1, max(kw - 1, factor - 1)
    y = jax.lax.conv_general_dilated(
        x,
        w.astype(x.dtype),
        (1, 1),
        ((lo, hi), (lo, hi)),
        lhs_dilation=(factor, factor),
        dimension_numbers=_DIMS,
    )
    return upfirdn_2d(y, kk, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(
    x: jax.Array, w: jax.Array, k: Kernel = None, factor: int = 2, gain: float = 1.0
) -> jax.Array:
    """A correlation by ``w`` (HWIO) fused with ``downsample_2d(·, k)``.

    FIR-filters with the padding of both operations, then applies ``w`` with stride ``factor``.
    Returns (N, H/factor, W/factor, out).
    """
    if w.ndim != 4 or w.shape[0] != w.shape[1]:
        raise ValueError(f"conv_downsample_2d needs a square HWIO kernel, got shape {w.shape}")
    kk = setup_kernel(k, factor) * gain
    p = (kk.shape[0] - factor) + (w.shape[0] - 1)
    x = upfirdn_2d(x, kk, pad0=(p + 1) // 2, pad1=p // 2)
    return jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (factor, factor), "VALID", dimension_numbers=_DIMS
    )


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour up-sampling: every pixel repeated factor × factor times."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
    return x.reshape(n, h * factor, w * factor, c)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Average over non-overlapping factor × factor windows."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class Conv2d(nn.Module):
    """Square convolution with optional fused FIR up- or down-sampling.

    Parameters ``weight`` (HWIO) and ``bias``, named as in the official code.
    """

    fmaps: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_kernel: tuple[int, ...] = (1, 3, 3, 1)
    use_bias: bool = True
    weight_var: str = "weight"
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.up and self.down:
            raise ValueError("Conv2d: up and down cannot both be set")
        if self.kernel < 1 or self.kernel % 2 != 1:
            raise ValueError(f"Conv2d: kernel size must be odd and >= 1, got {self.kernel}")
        init = self.kernel_init or nn.initializers.lecun_normal()
        shape = (self.kernel, self.kernel, x.shape[-1], self.fmaps)
        w = self.param(self.weight_var, init, shape)
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = jax.lax.conv_general_dilated(
                x, w.astype(x.dtype), (1, 1), "SAME", dimension_numbers=_DIMS
            )
        if self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (self.fmaps,)).astype(x.dtype)
        return x
