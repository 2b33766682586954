"""The NCSN++ network on CIFAR-10 with the DDPM objective (VP SDE, discrete steps)."""

from configs.default_cifar10_configs import get_default_configs, set_ncsnpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = False
    config.training.reduce_mean = True

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'none')

    config.data.centered = True

    model = config.model
    set_ncsnpp_model(model)
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.embedding_type = 'positional'
    return config
