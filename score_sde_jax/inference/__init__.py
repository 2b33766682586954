"""Every mode that draws from a trained checkpoint, over every device of every process:
:mod:`.sample` (``--mode sample``, ``--seeds``), :mod:`.controllable` (inpainting, colorization,
class-conditional sampling), :mod:`.latents` (``--mode encode``, ``--mode interpolate``), all on
the one checkpoint → score_fn path, mesh loop and writer of :mod:`.common`."""

from score_sde_jax.inference.controllable import colorize, inpaint, sample_class  # noqa: F401
from score_sde_jax.inference.latents import encode, interpolate  # noqa: F401
from score_sde_jax.inference.sample import parse_seeds, sample  # noqa: F401
