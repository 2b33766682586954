"""Tiny DDPM (Ho et al.) with the discrete VP objective and ancestral sampling
(from vp/ddpm/cifar10.py)."""

from configs.tiny.common import shrink
from configs.vp.ddpm.cifar10 import get_config as _parent


def get_config():
    return shrink(_parent())
