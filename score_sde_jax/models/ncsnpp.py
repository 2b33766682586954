"""NCSN++ and DDPM++ (Song et al. 2021, Sec. 4 and App. H): one configurable U-Net.

Input x (B, H, W, C) in NHWC, labels (B,): σ for the Fourier embedding (VE), or a (continuous)
time step / index for the sinusoidal one. The output has x's shape: the score (``scale_by_sigma``
divides by σ) or the noise prediction ε̂, depending on how the network was trained.

``config.model`` keys: nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv,
conditional, fir, fir_kernel, skip_rescale, resblock_type ('ddpm' | 'biggan'), progressive
('none' | 'output_skip' | 'residual'), progressive_input ('none' | 'input_skip' | 'residual'),
progressive_combine ('sum' | 'cat'), embedding_type ('fourier' | 'positional'), fourier_scale,
init_scale, scale_by_sigma, nonlinearity, dtype (compute dtype, ``layers.get_dtype``), remat
(recompute each residual and attention block in the backward pass), num_classes (K > 0: the
class embedding of ``class_labels`` in {0..K}, K = null, added to temb; default 0 = none); plus
``config.data.centered`` and, for ``scale_by_sigma`` with positional embeddings, sigma_min /
sigma_max / num_scales.

Submodules are created in the order of the official code, so Flax names them identically
(``Dense_0``, ``Conv_0``, ``ResnetBlockBigGANpp_3``, ``Downsample_0`` ...).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde_jax.models import layers, layerspp, utils

Array = jax.Array
conv3x3 = layerspp.conv3x3
group_norm = layerspp.group_norm
_CHOICES = {
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "embedding_type": ("fourier", "positional"),
    "resblock_type": ("ddpm", "biggan"),
}


def _option(config, key: str) -> str:
    value = str(config.model[key]).lower()
    if value not in _CHOICES[key]:
        raise ValueError(f"config.model.{key}={value!r} is not one of {_CHOICES[key]}")
    return value


@utils.register_model(name="ncsnpp")
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network (see the module docstring)."""

    config: ml_collections.ConfigDict

    def _embed(self, labels: Array, act, dtype) -> tuple[Array | None, Array | None]:
        """Noise-level embedding (B, 4 nf) or None, and σ of each sample (or None). The
        Fourier / sinusoidal features and σ are in full precision (float32, or float64 for a
        float64 network), the two dense layers compute in ``dtype``."""
        m, full = self.config.model, layers.full_precision(dtype)
        if _option(self.config, "embedding_type") == "fourier":
            # labels are σ; the projection sees log σ.
            used_sigmas = labels
            temb = layerspp.GaussianFourierProjection(
                embedding_size=m.nf, scale=m.fourier_scale
            )(jnp.log(labels))
        else:
            used_sigmas = None
            if m.scale_by_sigma:
                sigmas = jnp.asarray(layers.get_sigmas(self.config), full)
                used_sigmas = sigmas[labels.astype(jnp.int32)]
            temb = layers.get_timestep_embedding(labels, m.nf, dtype=full)
        if not m.conditional:
            return None, used_sigmas
        temb = layers.dense(temb, m.nf * 4, dtype)
        temb = layers.dense(act(temb), m.nf * 4, dtype)
        return temb, used_sigmas

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True,
                 class_labels: Array | None = None) -> Array:
        config, m = self.config, self.config.model
        act = layers.get_act(config)
        nf, ch_mult = m.nf, tuple(m.ch_mult)
        num_resolutions = len(ch_mult)
        fir, fir_kernel = bool(m.fir), tuple(m.fir_kernel)
        skip_rescale, init_scale = bool(m.skip_rescale), float(m.init_scale)
        resblock_type = _option(config, "resblock_type")
        progressive = _option(config, "progressive")
        progressive_input = _option(config, "progressive_input")
        combiner = functools.partial(layerspp.Combine, method=str(m.progressive_combine).lower())
        if x.ndim != 4:
            raise ValueError(f"NCSNpp expects NHWC images, got shape {x.shape}")

        dtype = layers.get_dtype(config)
        temb, used_sigmas = self._embed(labels, act, dtype)
        temb = utils.class_embedding(config, temb, class_labels, x.shape[0], nf * 4)

        attn_block = functools.partial(layers.maybe_remat(layerspp.AttnBlockpp, config),
                                       init_scale=init_scale, skip_rescale=skip_rescale)
        upsample = functools.partial(
            layerspp.Upsample, with_conv=m.resamp_with_conv, fir=fir, fir_kernel=fir_kernel
        )
        downsample = functools.partial(
            layerspp.Downsample, with_conv=m.resamp_with_conv, fir=fir, fir_kernel=fir_kernel
        )
        # The pyramids resample with a convolution only in their 'residual' variants.
        pyramid_upsample = functools.partial(
            layerspp.Upsample, fir=fir, fir_kernel=fir_kernel, with_conv=progressive == "residual"
        )
        pyramid_downsample = functools.partial(
            layerspp.Downsample,
            fir=fir,
            fir_kernel=fir_kernel,
            with_conv=progressive_input == "residual",
        )
        common = dict(act=act, dropout=m.dropout, init_scale=init_scale, skip_rescale=skip_rescale)
        # With remat, train (argument 3, counting self) stays a Python bool.
        if resblock_type == "ddpm":
            block_cls = layers.maybe_remat(layerspp.ResnetBlockDDPMpp, config, (3,))
            resnet_block = functools.partial(block_cls, **common)
        else:
            block_cls = layers.maybe_remat(layerspp.ResnetBlockBigGANpp, config, (3,))
            resnet_block = functools.partial(block_cls, fir=fir, fir_kernel=fir_kernel, **common)

        if not config.data.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
        x = x.astype(dtype)

        # Downsampling path.
        input_pyramid = x if progressive_input != "none" else None
        hs = [conv3x3(x, nf)]
        for i_level in range(num_resolutions):
            for _ in range(m.num_res_blocks):
                h = resnet_block(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if h.shape[1] in m.attn_resolutions:
                    h = attn_block()(h)
                hs.append(h)
            if i_level == num_resolutions - 1:
                continue
            if resblock_type == "ddpm":
                h = downsample()(hs[-1])
            else:
                h = resnet_block(down=True)(hs[-1], temb, train)
            if progressive_input == "input_skip":
                input_pyramid = pyramid_downsample()(input_pyramid)
                h = combiner()(input_pyramid, h)
            elif progressive_input == "residual":
                input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                input_pyramid = layerspp.residual(input_pyramid, h, skip_rescale)
                h = input_pyramid
            hs.append(h)

        h = hs[-1]
        h = resnet_block()(h, temb, train)
        h = attn_block()(h)
        h = resnet_block()(h, temb, train)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(m.num_res_blocks + 1):
                skip = hs.pop()
                h = resnet_block(out_ch=nf * ch_mult[i_level])(
                    jnp.concatenate([h, skip], axis=-1), temb, train
                )
            if h.shape[1] in m.attn_resolutions:
                h = attn_block()(h)

            if progressive == "output_skip":
                if pyramid is not None:
                    pyramid = pyramid_upsample()(pyramid)
                branch = conv3x3(act(group_norm(h)), x.shape[-1], bias=True, init_scale=init_scale)
                pyramid = branch if pyramid is None else pyramid + branch
            elif progressive == "residual":
                if pyramid is None:
                    pyramid = conv3x3(act(group_norm(h)), h.shape[-1], bias=True)
                else:
                    pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
                    pyramid = layerspp.residual(pyramid, h, skip_rescale)
                    h = pyramid

            if i_level != 0:
                if resblock_type == "ddpm":
                    h = upsample()(h)
                else:
                    h = resnet_block(up=True)(h, temb, train)

        if hs:
            raise AssertionError("NCSNpp: unused skip connections")

        if progressive == "output_skip":
            h = pyramid
        else:
            h = act(group_norm(h))
            h = conv3x3(h, x.shape[-1], init_scale=init_scale)

        h = h.astype(layers.full_precision(dtype))
        if m.scale_by_sigma:
            if used_sigmas is None:
                raise ValueError("config.model.scale_by_sigma needs sigmas")
            h = h / used_sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h
