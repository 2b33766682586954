"""Tiny NCSN++ with the high-resolution architecture (from ve/ffhq_256_ncsnpp_continuous.py):
input_skip / output_skip pyramids with FIR resampling, on 16x16 digits."""

from configs.tiny.common import shrink
from configs.ve.ffhq_256_ncsnpp_continuous import get_config as _parent


def get_config():
    return shrink(_parent())
