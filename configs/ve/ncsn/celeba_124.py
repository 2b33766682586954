"""NCSN on CelebA with NCSNv2's techniques 1, 2, 4 (500 noise levels up to 90)."""

from configs.default_celeba_configs import get_default_configs
from configs.default_cifar10_configs import set_ncsn_model


def get_config():
    config = get_default_configs()
    set_ncsn_model(config, 'ncsn', num_scales=500, ema_rate=0., lr=1e-3)
    config.sampling.n_steps_each = 5
    config.sampling.snr = 0.128
    return config
