"""NCSN (Song & Ermon, 2019) and NCSNv2 (Song & Ermon, 2020) score networks, NHWC.

Registered names, as in the official score_sde configs:
  'ncsn'        NCSNv1: noise-conditional RefineNet (conditional InstanceNorm++ everywhere),
                for images below 96 px.
  'ncsnv2_64'   NCSNv2 for images below 96 px (CIFAR-10, CelebA 64).
  'ncsnv2_128'  NCSNv2 for 96-128 px (LSUN 128).
  'ncsnv2_256'  NCSNv2 for 129-256 px.
  'ncsnv2'      NCSNv2 with the variant picked from ``config.data.image_size``.

Labels: an integer noise-level index into the descending σ table (discrete SMLD, label
``round((T − t)(N − 1))``), or a float σ (continuous VE). NCSNv2 is unconditional and, with
``config.model.scale_by_sigma``, returns its output divided by σ_label — the score of a
Gaussian-perturbed datum scales as 1/σ (NCSNv2 technique 3). Inputs in [0, 1] are mapped to
[-1, 1] unless ``config.data.centered``. ``config.model.dtype`` is the compute dtype
(``layers.get_dtype``); the output is in its ``layers.full_precision``.
``config.model.remat`` recomputes each backbone residual block in the backward pass.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import ml_collections

from score_sde_jax.models import utils
from score_sde_jax.models.layers import full_precision, get_act, get_dtype, maybe_remat
from score_sde_jax.models.ncsnv2_layers import (
    ResidualBlock,
    get_normalization,
    label_indices,
    label_sigmas,
    ncsn_conv,
    refinenet,
)

Array = jax.Array

# (width multiplier, dilation) of each backbone stage; RefineBlock widths, deepest first. These
# are the original NCSN / NCSNv2 networks (ermongroup, score_sde_pytorch); the JAX score_sde
# widens the third RefineBlock of the 64 px variant to 2·nf.
_SPECS = {
    64: (((1, 1), (2, 1), (2, 2), (2, 4)), (2, 2, 1, 1)),
    128: (((1, 1), (2, 1), (2, 1), (4, 2), (4, 4)), (4, 2, 2, 1, 1)),
    256: (((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4)), (4, 2, 2, 2, 1, 1)),
}


def variant_for_image_size(image_size: int) -> int:
    """The NCSNv2 variant (64, 128 or 256) the official code uses for ``image_size`` px."""
    if image_size < 96:
        return 64
    if image_size <= 128:
        return 128
    if image_size <= 256:
        return 256
    raise ValueError(f'config.data.image_size={image_size}: NCSNv2 exists up to 256 px')


class _RefineNetScoreModel(nn.Module):
    """Shared body: input scaling, RefineNet trunk, output conv, optional division by σ."""

    config: ml_collections.ConfigDict
    variant: ClassVar[int | None] = 64
    conditional: ClassVar[bool] = False

    def _variant(self) -> int:
        return self.variant or variant_for_image_size(self.config.data.image_size)

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
        """x: (B, H, W, C); labels: (B,) int index or float σ. Returns (B, H, W, C)."""
        config = self.config
        if x.ndim != 4:
            raise ValueError(f'{config.model.name} expects NHWC images, got shape {x.shape}')
        act = get_act(config)
        norm = get_normalization(config, conditional=self.conditional)
        stages, refine = _SPECS[self._variant()]
        y = label_indices(labels, config)

        h = (x if config.data.centered else 2 * x - 1.0).astype(get_dtype(config))
        h = refinenet(h, y, config.model.nf, stages, refine, norm,
                      refine_norm=norm if self.conditional else None, act=act,
                      interpolation=config.model.interpolation,
                      residual_block=maybe_remat(ResidualBlock, config))
        h = ncsn_conv(act(norm()(h, y)), x.shape[-1]).astype(full_precision(get_dtype(config)))
        if config.model.scale_by_sigma:
            h = h / label_sigmas(labels, config).reshape((-1, 1, 1, 1))
        return h


@utils.register_model(name='ncsn')
class NCSN(_RefineNetScoreModel):
    """NCSNv1: every normalisation is InstanceNorm++ conditioned on the noise level."""

    variant: ClassVar[int | None] = 64
    conditional: ClassVar[bool] = True


@utils.register_model(name='ncsnv2_64')
class NCSNv2(_RefineNetScoreModel):
    """NCSNv2 for images below 96 px: 4 stages (the last two dilated 2 and 4)."""

    variant: ClassVar[int | None] = 64


@utils.register_model(name='ncsnv2_128')
class NCSNv2_128(_RefineNetScoreModel):  # noqa: N801 (official name)
    """NCSNv2 for 96-128 px images: 5 stages."""

    variant: ClassVar[int | None] = 128


@utils.register_model(name='ncsnv2_256')
class NCSNv2_256(_RefineNetScoreModel):  # noqa: N801 (official name)
    """NCSNv2 for 129-256 px images: 6 stages."""

    variant: ClassVar[int | None] = 256


@utils.register_model(name='ncsnv2')
class NCSNv2Auto(_RefineNetScoreModel):
    """NCSNv2 with the variant chosen from ``config.data.image_size``."""

    variant: ClassVar[int | None] = None
