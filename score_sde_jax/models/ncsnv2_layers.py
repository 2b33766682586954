"""Building blocks of NCSN (Song & Ermon, 2019) and NCSNv2 (Song & Ermon, 2020): a RefineNet
with a dilated ResNet backbone, InstanceNorm++ and PyTorch-style initialisation. NHWC.

The noise-conditional NCSN (v1) and the unconditional NCSNv2 share these blocks: every block
takes ``(x, y)`` and a ``norm`` factory. NCSNv1 normalises inside its RefineNet parts with a
conditional InstanceNorm++ and pools by averaging; NCSNv2 has no normalisation there
(``refine_norm=None``) and max-pools.

Also here: the map from a network label to its noise level σ (index or value).

Every layer computes in its input's dtype; the normalisations compute in its
``layers.full_precision`` (float32, or float64 for a float64 network) and return their input's
dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde_jax.models.layers import full_precision, get_dtype, get_sigmas

Array = jax.Array
NormFactory = Callable[[], nn.Module]


# ------------------------------------------------------------------------------ noise levels
def label_sigmas(labels: Array, config) -> Array:
    """σ for each label, shape (B,): integer labels index the descending table
    ``layers.get_sigmas`` (σ_max first); float labels are already σ (continuous VE, label σ(t))."""
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jnp.asarray(get_sigmas(config), full_precision(get_dtype(config)))[labels]
    return labels


def label_indices(labels: Array, config) -> Array:
    """Integer noise-level index for each label, shape (B,): integer labels pass through; float
    labels (σ) go to the nearest level of ``layers.get_sigmas`` in log space."""
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return labels
    m = config.model
    log_max, log_min = math.log(m.sigma_max), math.log(m.sigma_min)
    frac = (log_max - jnp.log(labels)) / (log_max - log_min)
    return jnp.clip(jnp.round(frac * (m.num_scales - 1)), 0, m.num_scales - 1).astype(jnp.int32)


# ------------------------------------------------------------------------------- convolutions
def _torch_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def ncsn_conv(x: Array, features: int, kernel: int = 3, bias: bool = True,
              dilation: int = 1) -> Array:
    """k×k 'SAME' convolution with PyTorch's default initialisation (as NCSN / NCSNv2):
    weights and bias ~ U(±1/√fan_in). Must be called inside a compact module."""
    fan_in = kernel * kernel * x.shape[-1]
    return nn.Conv(features, (kernel, kernel), padding='SAME', use_bias=bias,
                   kernel_dilation=(dilation, dilation), dtype=x.dtype,
                   kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                   bias_init=_torch_bias_init(fan_in))(x)


def resize_align_corners(x: Array, shape: Sequence[int], method: str = 'bilinear') -> Array:
    """Resize (B, H, W, C) to (B, *shape, C) as PyTorch's ``interpolate(align_corners=True)``
    (bilinear: output corners sit on input corners) or nearest neighbour (index ⌊i·H/H'⌋)."""

    def weights(n_in: int, n_out: int) -> Array:  # (n_out, n_in) interpolation matrix
        if method == 'nearest':
            idx = (jnp.arange(n_out) * n_in) // n_out
            return jax.nn.one_hot(idx, n_in, dtype=x.dtype)
        src = jnp.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
        lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 1)
        hi = jnp.minimum(lo + 1, n_in - 1)
        frac = (src - lo).astype(x.dtype)[:, None]
        return (1 - frac) * jax.nn.one_hot(lo, n_in, dtype=x.dtype) + frac * jax.nn.one_hot(
            hi, n_in, dtype=x.dtype)

    if tuple(x.shape[1:3]) == tuple(shape):
        return x
    wh, ww = weights(x.shape[1], shape[0]), weights(x.shape[2], shape[1])
    return jnp.einsum('ih,jw,bhwc->bijc', wh, ww, x)


def _mean_pool(x: Array) -> Array:
    """2×2 average pooling with stride 2, (B, H, W, C) -> (B, H/2, W/2, C)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


# ------------------------------------------------------------------------------ normalisation
def _scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _instance_stats(x: Array) -> tuple[Array, Array]:
    """The instance-normalised x (per sample and channel over H, W) and the channel means μ
    (B, C) standardised over channels (the '++' term; unbiased variance over channels, as the
    original NCSN code). Both in x's ``full_precision``."""
    x = x.astype(full_precision(x.dtype))
    means = jnp.mean(x, axis=(1, 2))
    h = (x - means[:, None, None, :]) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + 1e-5)
    m = jnp.mean(means, axis=-1, keepdims=True)
    v = jnp.var(means, axis=-1, keepdims=True, ddof=1 if x.shape[-1] > 1 else 0)
    return h, (means - m) / jnp.sqrt(v + 1e-5)


class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++: γ (IN(x) + α · standardised channel means) + β. ``y`` is ignored."""

    @nn.compact
    def __call__(self, x: Array, y: Array | None = None) -> Array:
        c = x.shape[-1]
        h, means_plus = _instance_stats(x)
        alpha = self.param('alpha', _scale_init, (c,))
        gamma = self.param('gamma', _scale_init, (c,))
        beta = self.param('beta', nn.initializers.zeros, (c,))
        return (gamma * (h + alpha * means_plus[:, None, None, :]) + beta).astype(x.dtype)


class ConditionalInstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ whose (γ, α, β) are embedded per noise level ``y`` (B,) int."""

    num_classes: int

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        c = x.shape[-1]

        def init(key, shape, dtype=jnp.float32):  # γ, α ~ N(1, 0.02²); β = 0
            return jnp.concatenate([_scale_init(key, (shape[0], 2 * c), dtype),
                                    jnp.zeros((shape[0], c), dtype)], axis=-1)

        gamma, alpha, beta = jnp.split(
            nn.Embed(self.num_classes, 3 * c, embedding_init=init)(y), 3, axis=-1)
        h, means_plus = _instance_stats(x)
        h = h + alpha[:, None, None, :] * means_plus[:, None, None, :]
        return (gamma[:, None, None, :] * h + beta[:, None, None, :]).astype(x.dtype)


class InstanceNorm2d(nn.Module):
    """Plain instance normalisation with a learned per-channel scale and bias."""

    @nn.compact
    def __call__(self, x: Array, y: Array | None = None) -> Array:
        c = x.shape[-1]
        h, _ = _instance_stats(x)
        out = h * self.param('scale', nn.initializers.ones, (c,)) + self.param(
            'bias', nn.initializers.zeros, (c,))
        return out.astype(x.dtype)


class GroupNorm(nn.Module):
    """``nn.GroupNorm`` (32 groups, or fewer when C is small) with the ``(x, y)`` signature."""

    @nn.compact
    def __call__(self, x: Array, y: Array | None = None) -> Array:
        return nn.GroupNorm(num_groups=min(32, max(x.shape[-1] // 4, 1)), dtype=x.dtype)(x)


_NORMS = {'InstanceNorm++': InstanceNorm2dPlus, 'InstanceNorm': InstanceNorm2d,
          'GroupNorm': GroupNorm}


def get_normalization(config, conditional: bool = False) -> NormFactory:
    """Factory of the norm named by ``config.model.normalization``; modules take ``(x, y)``.
    Conditional (NCSNv1): InstanceNorm++ embedded over ``config.model.num_scales`` levels."""
    name = config.model.normalization
    if conditional:
        if name != 'InstanceNorm++':
            raise ValueError(f'config.model.normalization={name!r}: the noise-conditional NCSN '
                             "supports only 'InstanceNorm++'")
        return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=config.model.num_scales)
    if name not in _NORMS:
        raise ValueError(f'config.model.normalization={name!r} is not one of {sorted(_NORMS)}')
    return _NORMS[name]


# ------------------------------------------------------------------------------------ blocks
class ResidualBlock(nn.Module):
    """Pre-activation residual block of the backbone. ``down`` halves H, W with a mean pool,
    unless ``dilation`` > 1, where dilated convolutions replace the down-sampling."""

    features: int
    norm: NormFactory
    act: Callable[[Array], Array]
    down: bool = False
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        d = self.dilation
        h = self.act(self.norm()(x, y))
        if self.down:
            h = self.act(self.norm()(ncsn_conv(h, x.shape[-1], dilation=d), y))
            if d > 1:
                h = ncsn_conv(h, self.features, dilation=d)
                shortcut = ncsn_conv(x, self.features, dilation=d)
            else:
                h = _mean_pool(ncsn_conv(h, self.features))
                shortcut = _mean_pool(ncsn_conv(x, self.features, kernel=1))
        else:
            if self.features == x.shape[-1]:
                shortcut = x
            else:
                shortcut = ncsn_conv(x, self.features, kernel=3 if d > 1 else 1, dilation=d)
            h = self.act(self.norm()(ncsn_conv(h, self.features, dilation=d), y))
            h = ncsn_conv(h, self.features, dilation=d)
        return h + shortcut


class RCUBlock(nn.Module):
    """Residual conv unit: ``n_blocks`` × (x + [norm →] act → conv, ``n_stages`` times)."""

    features: int
    n_blocks: int
    n_stages: int
    act: Callable[[Array], Array]
    norm: NormFactory | None = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                if self.norm is not None:
                    x = self.norm()(x, y)
                x = ncsn_conv(self.act(x), self.features, bias=False)
            x = x + residual
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling: x = act(x); ``n_stages`` × (path = conv(pool5×5([norm] path));
    x += path). Max-pool without a norm (NCSNv2), average-pool with one (NCSNv1)."""

    features: int
    n_stages: int
    act: Callable[[Array], Array]
    norm: NormFactory | None = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            if self.norm is not None:
                path = nn.avg_pool(self.norm()(path, y), (5, 5), padding='SAME')
            else:
                path = nn.max_pool(path, (5, 5), padding='SAME')
            path = ncsn_conv(path, self.features, bias=False)
            x = path + x
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: Σ_i resize(conv([norm] x_i)) at ``shape`` (H, W)."""

    shape: Sequence[int]
    features: int
    interpolation: str = 'bilinear'
    norm: NormFactory | None = None

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        methods = {'bilinear': 'bilinear', 'nearest_neighbor': 'nearest'}
        if self.interpolation not in methods:
            raise ValueError(f'config.model.interpolation={self.interpolation!r} is not one of '
                             f'{sorted(methods)}')
        total = 0.0
        for x in xs:
            h = ncsn_conv(self.norm()(x, y) if self.norm is not None else x, self.features)
            total = total + resize_align_corners(h, self.shape, methods[self.interpolation])
        return total


class RefineBlock(nn.Module):
    """RefineNet block: RCU on each input, fusion at ``output_shape`` (unless ``start``), CRP,
    then an output RCU (3 blocks at the ``end``, else 1)."""

    output_shape: Sequence[int]
    features: int
    act: Callable[[Array], Array]
    interpolation: str = 'bilinear'
    start: bool = False
    end: bool = False
    norm: NormFactory | None = None

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        hs = [RCUBlock(x.shape[-1], 2, 2, self.act, self.norm)(x, y) for x in xs]
        if self.start:
            h = hs[0]
        else:
            h = MSFBlock(self.output_shape, self.features, self.interpolation, self.norm)(hs, y)
        h = CRPBlock(self.features, 2, self.act, self.norm)(h, y)
        return RCUBlock(self.features, 3 if self.end else 1, 2, self.act, self.norm)(h, y)


def refinenet(x: Array, y: Array, nf: int, stages: Sequence[tuple[int, int]],
              refine_features: Sequence[int], norm: NormFactory, refine_norm: NormFactory | None,
              act: Callable[[Array], Array], interpolation: str,
              residual_block: type[nn.Module] = ResidualBlock) -> Array:
    """The NCSN / NCSNv2 trunk (call inside a compact module).

    ``stages``: (width multiplier, dilation) per backbone stage; every stage but the first
    starts with a ``down`` block. ``refine_features``: width multipliers of the RefineBlocks
    from the deepest stage up. ``residual_block``: the backbone block class (``ResidualBlock``, or
its rematerialized version under the same name). Returns the last RefineBlock output, (B, H, W, nf·mult).
    """
    if len(refine_features) != len(stages):
        raise ValueError('refine_features needs one entry per backbone stage')
    h = ncsn_conv(x, nf)
    layers = []
    for i, (mult, dilation) in enumerate(stages):
        h = residual_block(mult * nf, norm, act, down=i > 0, dilation=dilation)(h, y)
        h = residual_block(mult * nf, norm, act, dilation=dilation)(h, y)
        layers.append(h)
    ref = None
    for k, layer in enumerate(reversed(layers)):
        inputs = [layer] if ref is None else [layer, ref]
        ref = RefineBlock(layer.shape[1:3], refine_features[k] * nf, act, interpolation,
                          start=ref is None, end=k == len(layers) - 1, norm=refine_norm)(inputs, y)
    return ref

