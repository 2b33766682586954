"""Reproduces DDPM (Ho et al., 2020) on CelebA-HQ 256x256."""

from configs.vp.ddpm.bedroom import get_config as _ddpm_lsun


def get_config():
    config = _ddpm_lsun()
    data = config.data
    del data['category']
    data.dataset = 'CelebAHQ'
    data.tfds_name = 'celeb_a_hq/256'
    return config
