"""Layers of NCSN++ / DDPM++ (NHWC, Flax), named as in the official score_sde code.

GroupNorm layers here use min(C // 4, 32) groups; ``skip_rescale`` divides every residual sum by
√2; ``init_scale`` scales the initialiser of the last convolution of a residual branch (0: ~zero).
Every layer computes in its input's dtype (see ``layers``).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde_jax.models import layers
from score_sde_jax.models import up_or_down_sampling as ud

Array = jax.Array
conv1x1 = layers.ddpm_conv1x1
conv3x3 = layers.ddpm_conv3x3
NIN = layers.NIN
default_init = layers.default_init
residual = layers.residual
Dropout = layers.Dropout
FirKernel = tuple[int, ...]


def group_norm(x: Array) -> Array:
    """GroupNorm of x with min(C // 4, 32) groups (eps 1e-6), as NCSN++ uses throughout."""
    return layers.group_norm(x, min(x.shape[-1] // 4, 32))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: [sin(2π x W), cos(2π x W)], W ~ N(0, scale²).

    (B,) -> (B, 2·embedding_size). ``W`` is a parameter (as in the official code and its
    parameter counts) but receives no gradient.
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        proj = x[:, None] * jax.lax.stop_gradient(w)[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Combine(nn.Module):
    """Merge a skip input ``x`` into ``y``: 1×1 conv of x to y's channels, then cat or sum."""

    method: str = "cat"

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv1x1(x, y.shape[-1])
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"config.model.progressive_combine={self.method!r}: use 'cat' or 'sum'")


class AttnBlockpp(nn.Module):
    """Self-attention block of NCSN++: residual(x, attention(GroupNorm(x)))."""

    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = layers.spatial_self_attention(x, group_norm, self.init_scale)
        return residual(x, h, self.skip_rescale)


class Upsample(nn.Module):
    """×2 up-sampling: nearest (+ 3×3 conv), or FIR (``upsample_2d`` / fused ``Conv2d``)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: FirKernel = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            h = ud.naive_upsample_2d(x, factor=2)
            if self.with_conv:
                h = conv3x3(h, out_ch)
        elif not self.with_conv:
            h = ud.upsample_2d(x, self.fir_kernel, factor=2)
        else:
            h = ud.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel,
                          use_bias=True, kernel_init=default_init())(x)
        return h


class Downsample(nn.Module):
    """×2 down-sampling: stride-2 3×3 conv or average pooling, or FIR (+ fused ``Conv2d``)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: FirKernel = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            if self.with_conv:
                return conv3x3(x, out_ch, stride=2)
            return ud.naive_downsample_2d(x, factor=2)
        if not self.with_conv:
            return ud.downsample_2d(x, self.fir_kernel, factor=2)
        return ud.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel,
                         use_bias=True, kernel_init=default_init())(x)


def _branch_tail(h: Array, temb: Array | None, out_ch: int, act: Callable, dropout: float,
                 init_scale: float, train: bool) -> Array:
    """conv3x3 -> + Dense(act(temb)) -> act(GroupNorm) -> dropout -> conv3x3 (init_scale)."""
    h = conv3x3(h, out_ch)
    if temb is not None:
        h = h + layers.dense(act(temb), out_ch, h.dtype)[:, None, None, :]
    h = act(group_norm(h))
    h = Dropout(dropout)(h, deterministic=not train)
    return conv3x3(h, out_ch, init_scale=init_scale)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block with NCSN++ GroupNorm, ``skip_rescale`` and ``init_scale``."""

    act: Callable
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = self.act(group_norm(x))
        h = _branch_tail(h, temb, out_ch, self.act, self.dropout, self.init_scale, train)
        if c != out_ch:
            x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
        return residual(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block that can also up- or down-sample (×2, FIR or naive).

    The resampling acts on both the branch (after the first GroupNorm + act) and the shortcut;
    the shortcut gets a 1×1 conv when the channels change or the block resamples.
    """

    act: Callable
    up: bool = False
    down: bool = False
    out_ch: int | None = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: FirKernel = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    def _resample(self, x: Array) -> Array:
        if self.up:
            if self.fir:
                return ud.upsample_2d(x, self.fir_kernel, factor=2)
            return ud.naive_upsample_2d(x, factor=2)
        if self.down:
            if self.fir:
                return ud.downsample_2d(x, self.fir_kernel, factor=2)
            return ud.naive_downsample_2d(x, factor=2)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = True) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = self._resample(self.act(group_norm(x)))
        x = self._resample(x)
        h = _branch_tail(h, temb, out_ch, self.act, self.dropout, self.init_scale, train)
        if c != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch)
        return residual(x, h, self.skip_rescale)
