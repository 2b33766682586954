"""NCSN++ cont. on CelebA-HQ 256x256 with the VE SDE (sigma_max 348).

CelebA-HQ needs a manual download: tensorflow-datasets 'celeb_a_hq/256' once prepared, or
`data.source = 'folder'` / 'npz' with `data.path`.
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
    data.dataset = 'CelebAHQ'
    data.tfds_name = 'celeb_a_hq/256'
    data.image_size = 256

    set_ncsnpp_256_model(config.model)
    config.model.sigma_max = 348.
    return config
