"""NCSN++ cont. on FFHQ 256x256 with the VE SDE (sigma_max 348).

FFHQ is not in tensorflow-datasets: set `data.path` to a folder of images (or an .npz file).
"""

from configs.default_cifar10_configs import set_pc_sampling
from configs.default_lsun_configs import get_default_configs, set_ncsnpp_256_model


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = True

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    data = config.data
    del data['category']
    data.dataset = 'FFHQ'
    data.source = 'folder'
    data.tfds_name = ''
    data.image_size = 256

    set_ncsnpp_256_model(config.model)
    config.model.sigma_max = 348.
    return config
