"""The DDPM network on CIFAR-10 without time conditioning (NCSNv2's technique 3)."""

from configs.vp.ddpm.cifar10 import get_config as _ddpm_cifar10


def get_config():
    config = _ddpm_cifar10()
    config.model.conditional = False
    return config
