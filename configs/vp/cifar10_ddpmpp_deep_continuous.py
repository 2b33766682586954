"""DDPM++ cont. deep (8 blocks per resolution) on CIFAR-10 with the VP SDE."""

from configs.default_cifar10_configs import get_default_configs, set_ddpmpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = True
    config.training.reduce_mean = True
    config.training.n_iters = 950001

    set_pc_sampling(config.sampling, 'euler_maruyama', 'none')

    config.data.centered = True

    set_ddpmpp_model(config.model)
    config.model.num_res_blocks = 8
    return config
