"""Shared defaults of the CelebA (64x64) experiments: the CIFAR-10 defaults with the official
CelebA differences (data, sigma_max 90, snr 0.17, sampling during evaluation)."""

import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs() -> ml_collections.ConfigDict:
    config = _cifar10_defaults()

    config.sampling.snr = 0.17

    config.eval.begin_ckpt = 1
    config.eval.enable_sampling = True

    data = config.data
    data.dataset = 'CELEBA'
    data.tfds_name = 'celeb_a'
    data.image_size = 64

    config.model.sigma_max = 90.
    return config
