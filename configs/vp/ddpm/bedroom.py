"""Reproduces DDPM (Ho et al., 2020) on LSUN bedroom 256x256."""

from configs.default_cifar10_configs import set_ddpm_model, set_pc_sampling
from configs.default_lsun_configs import get_default_configs, set_lsun_category


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = False
    config.training.reduce_mean = True

    set_pc_sampling(config.sampling, 'ancestral_sampling', 'none')

    set_lsun_category(config, 'bedroom')
    config.data.centered = True

    model = config.model
    set_ddpm_model(model)
    model.num_scales = 1000
    model.ch_mult = (1, 1, 2, 2, 4, 4)

    config.optim.lr = 2e-5
    return config
