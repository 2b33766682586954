"""Tiny NCSN++ with the discrete SMLD objective, VE SDE (from ve/cifar10_ncsnpp.py): integer
noise-level labels, positional embedding."""

from configs.tiny.common import shrink
from configs.ve.cifar10_ncsnpp import get_config as _parent


def get_config():
    return shrink(_parent())
