"""Reproduces DDPM (Ho et al., 2020) on CIFAR-10: the DDPM network, discrete VP objective,
ancestral sampling."""

from configs.default_cifar10_configs import get_default_configs, set_ddpm_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = False
    config.training.reduce_mean = True

    set_pc_sampling(config.sampling, 'ancestral_sampling', 'none')

    config.data.centered = True

    set_ddpm_model(config.model)
    return config
