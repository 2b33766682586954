"""The DDPM U-Net of Ho et al. (2020), as in the official score_sde code (NHWC, Flax).

Input x (B, H, W, C), labels (B,) time steps (integer or real) fed to a sinusoidal embedding.
Output has x's shape: ε̂ (or, with ``config.model.scale_by_sigma``, the output divided by
σ_label, for NCSN-style training with integer labels indexing the descending σ table).

``config.model`` keys: nf, ch_mult, num_res_blocks, attn_resolutions, dropout,
resamp_with_conv, conditional, normalization ('GroupNorm'), nonlinearity, scale_by_sigma (and
sigma_min / sigma_max / num_scales for it), dtype (compute dtype, ``layers.get_dtype``), remat
(recompute each residual and attention block in the backward pass), num_classes (K > 0: the
class embedding of ``class_labels`` in {0..K}, K = null, added to temb; default 0 = none);
``config.data.centered``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde_jax.models import layers, utils

Array = jax.Array


def get_normalization(config):
    """``norm(x)`` of ``config.model.normalization`` (DDPM supports GroupNorm: 32 groups, eps
    1e-6); call inside a compact module."""
    norm = config.model.normalization
    if norm != "GroupNorm":
        raise ValueError(f"config.model.normalization={norm!r}: the DDPM network uses 'GroupNorm'")
    return layers.group_norm


@utils.register_model(name="ddpm")
class DDPM(nn.Module):
    """DDPM score network (see the module docstring)."""

    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True,
                 class_labels: Array | None = None) -> Array:
        config, m = self.config, self.config.model
        act = layers.get_act(config)
        normalize = get_normalization(config)
        nf, ch_mult = m.nf, tuple(m.ch_mult)
        num_resolutions = len(ch_mult)
        if x.ndim != 4:
            raise ValueError(f"DDPM expects NHWC images, got shape {x.shape}")

        dtype = layers.get_dtype(config)
        attn_block = functools.partial(layers.maybe_remat(layers.AttnBlock, config),
                                       normalize=normalize)
        # With remat, train (argument 3, counting self) stays a Python bool.
        resnet_block = functools.partial(layers.maybe_remat(layers.ResnetBlockDDPM, config, (3,)),
                                         act=act, normalize=normalize, dropout=m.dropout)

        temb = None
        full = layers.full_precision(dtype)
        if m.conditional:  # full-precision sinusoidal features, dense layers in dtype
            temb = layers.get_timestep_embedding(labels, nf, dtype=full)
            temb = layers.dense(temb, nf * 4, dtype)
            temb = layers.dense(act(temb), nf * 4, dtype)
        temb = utils.class_embedding(config, temb, class_labels, x.shape[0], nf * 4)

        h = (x if config.data.centered else 2 * x - 1.0).astype(dtype)

        # Downsampling path.
        hs = [layers.ddpm_conv3x3(h, nf)]
        for i_level in range(num_resolutions):
            for _ in range(m.num_res_blocks):
                h = resnet_block(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in m.attn_resolutions:
                    h = attn_block()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                hs.append(layers.Downsample(with_conv=m.resamp_with_conv)(hs[-1]))

        h = hs[-1]
        h = resnet_block()(h, temb, train)
        h = attn_block()(h)
        h = resnet_block()(h, temb, train)

        # Upsampling path.
        for i_level in reversed(range(num_resolutions)):
            for _ in range(m.num_res_blocks + 1):
                skip = hs.pop()
                h = resnet_block(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, skip], axis=-1), temb, train
                )
            if h.shape[1] in m.attn_resolutions:
                h = attn_block()(h)
            if i_level != 0:
                h = layers.Upsample(with_conv=m.resamp_with_conv)(h)
        if hs:
            raise AssertionError("DDPM: unused skip connections")

        h = act(normalize(h))
        h = layers.ddpm_conv3x3(h, x.shape[-1], init_scale=0.0).astype(full)

        if m.scale_by_sigma:
            sigmas = jnp.asarray(layers.get_sigmas(config), full)
            used = sigmas[labels.astype(jnp.int32)]
            h = h / used.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h
