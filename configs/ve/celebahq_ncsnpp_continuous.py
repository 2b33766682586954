"""NCSN++ cont. on CelebA-HQ 1024x1024 with the VE SDE: the FFHQ-1024 experiment on CelebA-HQ
(the official file differs from it only in the data and in `training.reduce_mean = False`)."""

from configs.ve.ffhq_ncsnpp_continuous import get_config as _ffhq_1024


def get_config():
    config = _ffhq_1024()
    config.training.reduce_mean = False
    data = config.data
    data.dataset = 'CelebAHQ'
    data.source = 'tfds'
    data.tfds_name = 'celeb_a_hq/1024'
    return config
