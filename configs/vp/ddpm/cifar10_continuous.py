"""The DDPM network on CIFAR-10 trained with the continuous VP SDE."""

from configs.default_cifar10_configs import get_default_configs, set_ddpm_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = True
    config.training.reduce_mean = True

    set_pc_sampling(config.sampling, 'euler_maruyama', 'none')

    config.data.centered = True

    set_ddpm_model(config.model)
    return config
