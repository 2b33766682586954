"""NCSN (Song & Ermon, 2019) on CelebA 64x64: 10 noise levels from 1 to 0.01."""

from configs.default_celeba_configs import get_default_configs
from configs.default_cifar10_configs import set_ncsn_model


def get_config():
    config = get_default_configs()
    set_ncsn_model(config, 'ncsn', num_scales=10, ema_rate=0., lr=1e-3)
    config.model.sigma_max = 1.
    config.sampling.n_steps_each = 100
    config.sampling.snr = 0.316
    return config
