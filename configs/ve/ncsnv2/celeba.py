"""NCSNv2 (Song & Ermon, 2020) on CelebA 64x64: 500 noise levels from 90 to 0.01."""

from configs.default_celeba_configs import get_default_configs
from configs.default_cifar10_configs import set_ncsn_model


def get_config():
    config = get_default_configs()
    set_ncsn_model(config, 'ncsnv2_64', num_scales=500, ema_rate=0.999, lr=1e-4)
    config.sampling.n_steps_each = 5
    config.sampling.snr = 0.128
    return config
