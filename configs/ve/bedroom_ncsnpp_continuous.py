"""NCSN++ cont. on LSUN bedroom 256x256 with the VE SDE (sigma_max 378)."""

from configs.default_cifar10_configs import set_pc_sampling
from configs.default_lsun_configs import (
    get_default_configs,
    set_lsun_category,
    set_ncsnpp_256_model,
)


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = True

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    set_lsun_category(config, 'bedroom')

    set_ncsnpp_256_model(config.model)
    return config
