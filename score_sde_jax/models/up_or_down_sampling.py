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


def _pad_or_crop(x: jax.Array, pad0: int, pad1: int) -> jax.Array:
    """Zero-pad (crop, for negative values) both spatial axes of an NHWC array."""
    lo, hi = max(pad0, 0), max(pad1, 0)
    x = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    c0, c1 = max(-pad0, 0), max(-pad1, 0)
    return x[:, c0 : x.shape[1] - c1, c0 : x.shape[2] - c1, :]


def upfirdn_2d(
    x: jax.Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0, pad1: int = 0
) -> jax.Array:
    """Pad, up-sample, FIR-filter and down-sample NHWC images (see the module docstring).

    Args:
      x: (N, H, W, C).
      k: (kH, kW) FIR kernel, used as given (not normalised here).
    Returns:
      (N, ceil((H·up + pad0 + pad1 - kH + 1) / down), likewise for W, C).
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn_2d expects NHWC input, got shape {x.shape}")
    n, h, w, c = x.shape
    if up > 1:  # insert up-1 zeros after every pixel
        x = x.reshape(n, h, 1, w, 1, c)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
        x = x.reshape(n, h * up, w * up, c)
    x = _pad_or_crop(x, pad0, pad1)
    k = np.asarray(k, dtype=np.float32)
    # Convolution = correlation with the flipped kernel; one filter per channel (depthwise).
    kernel = jnp.asarray(np.tile(k[::-1, ::-1, None, None], (1, 1, 1, c)), dtype=x.dtype)
    return jax.lax.conv_general_dilated(
        x, kernel, (down, down), "VALID", dimension_numbers=_DIMS, feature_group_count=c
    )


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
