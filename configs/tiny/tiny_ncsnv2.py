"""Tiny NCSNv2 with the discrete SMLD objective and annealed Langevin dynamics
(from ve/ncsnv2/cifar10.py; 50 noise levels from 50 to 0.01)."""

from configs.tiny.common import shrink
from configs.ve.ncsnv2.cifar10 import get_config as _parent


def get_config():
    return shrink(_parent())
