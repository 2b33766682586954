"""Tiny DDPM++ cont., VP SDE (from vp/cifar10_ddpmpp_continuous.py, i.e. vp_cifar10.py):
positional embedding, no FIR, epsilon prediction, Euler-Maruyama sampling."""

from configs.tiny.common import shrink
from configs.vp.cifar10_ddpmpp_continuous import get_config as _parent


def get_config():
    return shrink(_parent())
