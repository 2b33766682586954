"""DDPM++ cont. deep on CIFAR-10 with the sub-VP SDE: the paper's best likelihood
(2.99 bits/dim)."""

from configs.default_cifar10_configs import get_default_configs, set_ddpmpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'subvpsde'
    config.training.continuous = True
    config.training.reduce_mean = True
    config.training.n_iters = 950001

    set_pc_sampling(config.sampling, 'euler_maruyama', 'none')

    config.data.centered = True

    set_ddpmpp_model(config.model)
    config.model.num_res_blocks = 8
    return config
