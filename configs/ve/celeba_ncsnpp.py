"""NCSN++ on CelebA 64x64 with the SMLD objective (VE SDE, discrete noise levels, sigma_max 90)."""

from configs.default_celeba_configs import get_default_configs
from configs.default_cifar10_configs import set_ncsnpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = False

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    set_ncsnpp_model(config.model)
    config.model.embedding_type = 'positional'
    return config
