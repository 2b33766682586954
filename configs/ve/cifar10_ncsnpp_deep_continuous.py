"""NCSN++ cont. deep (8 blocks per resolution) on CIFAR-10, VE SDE: the paper's headline
model (FID 2.20, IS 9.89)."""

from configs.default_cifar10_configs import get_default_configs, set_ncsnpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = True
    config.training.n_iters = 950001

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    set_ncsnpp_model(config.model)
    config.model.num_res_blocks = 8
    return config
