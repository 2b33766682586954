"""DDPM++ cont. on CIFAR-10 with the VP SDE (paper Tables 2 and 3).
`configs/vp_cifar10.py` is this experiment under a short name."""

from configs.default_cifar10_configs import get_default_configs, set_ddpmpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = True
    config.training.reduce_mean = True

    set_pc_sampling(config.sampling, 'euler_maruyama', 'none')

    config.data.centered = True

    set_ddpmpp_model(config.model)
    return config
