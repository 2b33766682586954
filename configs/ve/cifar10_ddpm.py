"""The DDPM network trained with the SMLD objective (VE SDE, discrete noise levels)."""

from configs.default_cifar10_configs import get_default_configs, set_ddpm_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = False

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    model = config.model
    set_ddpm_model(model)
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.conv_size = 3
    return config
