"""NCSN++ cont. on CIFAR-10 with the VE SDE (paper Table 3), sampled with PC (reverse diffusion +
Langevin, snr 0.16)."""

from configs.default_cifar10_configs import get_default_configs, set_ncsnpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = True

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    set_ncsnpp_model(config.model)  # Gaussian Fourier embedding of log sigma (default)
    return config
