"""The noise-conditional Wide-ResNet classifier of SPEC §6 (name 'wideresnet'), NHWC.

Wide-ResNet-28-10 (Zagoruyko & Komodakis, 2016) as the paper's CIFAR-10 classifier p_t(y | x):
three groups of ``blocks_per_group`` pre-activation residual blocks (widths 16k, 32k, 64k for
``channel_multiplier`` k; the second and third groups halve the resolution), GroupNorm in place
of BatchNorm, a noise-level embedding added inside every block, global average pooling and a
dense layer to ``num_classes`` logits. Depth 28 = 6 · 4 + 4, width 10.

Input: per-image standardization (x − mean) / max(std, 1/√D), after an optional per-channel
normalization (``model.channel_mean`` / ``model.channel_std``, the official CIFAR-10 statistics
in configs/classifier/cifar10_ve_wideresnet.py).
Conditioning: ``model.embedding_type`` 'fourier' -- Gaussian Fourier features of log σ (label σ,
as for VE; integer labels index the σ table) -- or 'positional' (sinusoidal, label as given, e.g.
999 t for VP); then Dense(4 nf) → swish → Dense(4 nf); each block adds Dense(width)(swish(temb))
after its first convolution. The residual shortcut average-pools and zero-pads channels when the
width changes. Module and parameter names follow the official Flax classifier
(``init_conv``, ``WideResnetGroup_i/WideResnetBlock_j/{init_bn, conv1, Dense_0, bn_2, conv2}``,
``pre-pool-bn``), so its parameter tree has the same layout.

Config keys (``config.model``): ``blocks_per_group``, ``channel_multiplier``, ``num_classes``,
``nf`` (Fourier embedding size; 4 nf the embedding width), ``embedding_type``,
``fourier_scale``, optional ``channel_mean``, ``channel_std``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde_jax.models import utils
from score_sde_jax.models.layers import get_timestep_embedding
from score_sde_jax.models.layerspp import GaussianFourierProjection
from score_sde_jax.models.ncsnv2_layers import label_sigmas

Array = jax.Array

# He-normal on fan-out for convolutions; U(−1/√n, 1/√n) (n = number of outputs) for the logits.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _logit_init(key, shape, dtype=jnp.float32):
    bound = 1.0 / math.sqrt(shape[1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _norm(x: Array, name: str, relu: bool = True) -> Array:
    """GroupNorm with min(C // 4, 32) groups (ε 1e-5), then ReLU."""
    h = nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
    return nn.relu(h) if relu else h


def _conv(x: Array, features: int, strides: int = 1, name: str | None = None) -> Array:
    return nn.Conv(features, (3, 3), (strides, strides), padding="SAME", use_bias=False,
                   kernel_init=_conv_init, name=name)(x)


def _shortcut(x: Array, like: Array) -> Array:
    """x brought to ``like``'s shape: average-pooled to its resolution, zero-padded channels."""
    if x.shape[-1] == like.shape[-1]:
        return x
    s = x.shape[1] // like.shape[1]
    x = nn.avg_pool(x, (s, s), (s, s))
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, like.shape[-1] - x.shape[-1])))


class WideResnetBlock(nn.Module):
    """Pre-activation block: norm → conv(stride) → + temb → norm → conv, plus the shortcut."""

    channels: int
    strides: int = 1
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Array | None) -> Array:
        if self.activate_before_residual:
            x = _norm(x, "init_bn")
            h = x
        else:
            h = _norm(x, "init_bn")
        h = _conv(h, self.channels, self.strides, name="conv1")
        if temb is not None:
            h = h + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
        h = _conv(_norm(h, "bn_2"), self.channels, name="conv2")
        return h + _shortcut(x, h)


class WideResnetGroup(nn.Module):
    blocks: int
    channels: int
    strides: int = 1
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Array | None) -> Array:
        for i in range(self.blocks):
            x = WideResnetBlock(self.channels, self.strides if i == 0 else 1,
                                self.activate_before_residual and i == 0)(x, temb)
        return x


def _standardize(x: Array, config) -> Array:
    m = config.model
    if m.get("channel_mean", None) is not None:
        mean = jnp.asarray(m.channel_mean, x.dtype)
        std = jnp.asarray(m.channel_std, x.dtype)
        x = (x - mean) / std
    d = math.prod(x.shape[1:])
    mu = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    sd = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    return (x - mu) / jnp.maximum(sd, 1.0 / math.sqrt(d))


def noise_embedding(labels: Array, config) -> Array:
    """The classifier's noise-level features (B, 4 nf) (see the module docstring)."""
    m = config.model
    kind = str(m.embedding_type).lower()
    if kind == "fourier":
        temb = GaussianFourierProjection(embedding_size=m.nf, scale=m.fourier_scale)(
            jnp.log(label_sigmas(labels, config)))
    elif kind == "positional":
        temb = get_timestep_embedding(labels.astype(jnp.float32), 2 * m.nf)
    else:
        raise ValueError(f"config.model.embedding_type={m.embedding_type!r}: expected 'fourier' "
                         "or 'positional'")
    temb = nn.Dense(4 * m.nf)(temb)
    return nn.Dense(4 * m.nf)(nn.swish(temb))


@utils.register_model(name="wideresnet")
class WideResNet(nn.Module):
    """p_t(y | x) logits: x (B, H, W, C), labels (B,) noise levels -> (B, num_classes)."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
        m = self.config.model
        if x.ndim != 4:
            raise ValueError(f"wideresnet takes images (B, H, W, C), got shape {x.shape}")
        if labels.shape != x.shape[:1]:
            raise ValueError(f"labels must have shape {x.shape[:1]}, got {labels.shape}")
        temb = noise_embedding(labels, self.config)
        h = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                    name="init_conv")(_standardize(x, self.config))
        k, n = m.channel_multiplier, m.blocks_per_group
        h = WideResnetGroup(n, 16 * k, 1, activate_before_residual=True)(h, temb)
        h = WideResnetGroup(n, 32 * k, 2)(h, temb)
        h = WideResnetGroup(n, 64 * k, 2)(h, temb)
        h = jnp.mean(_norm(h, "pre-pool-bn"), axis=(1, 2))
        return nn.Dense(m.num_classes, kernel_init=_logit_init)(h)
