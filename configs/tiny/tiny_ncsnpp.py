"""Tiny NCSN++ cont., VE SDE (from ve/cifar10_ncsnpp_continuous.py): FIR resampling, Fourier
embedding, residual input pyramid, output divided by sigma, PC sampling."""

from configs.tiny.common import shrink
from configs.ve.cifar10_ncsnpp_continuous import get_config as _parent


def get_config():
    return shrink(_parent())
