"""Tiny DDPM++ cont., sub-VP SDE (from subvp/cifar10_ddpmpp_continuous.py)."""

from configs.subvp.cifar10_ddpmpp_continuous import get_config as _parent
from configs.tiny.common import shrink


def get_config():
    return shrink(_parent())
