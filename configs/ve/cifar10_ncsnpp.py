"""NCSN++ on CIFAR-10, SMLD objective (VE SDE, 1000 discrete noise levels)."""

from configs.default_cifar10_configs import get_default_configs, set_ncsnpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = False

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    set_ncsnpp_model(config.model)
    config.model.embedding_type = 'positional'  # discrete noise-level index
    return config
