"""DDPM++ on CIFAR-10 with the DDPM objective (VP SDE, 1000 discrete steps)."""

from configs.default_cifar10_configs import get_default_configs, set_ddpmpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = False
    config.training.reduce_mean = True

    set_pc_sampling(config.sampling, 'ancestral_sampling', 'none')

    config.data.centered = True

    set_ddpmpp_model(config.model)
    return config
