"""NCSN on CIFAR-10 with NCSNv2's technique 5 only (EMA of weights)."""

from configs.default_cifar10_configs import get_default_configs, set_ncsn_model


def get_config():
    config = get_default_configs()
    set_ncsn_model(config, 'ncsn', num_scales=10, ema_rate=0.999, lr=1e-3)
    config.model.sigma_max = 1.
    config.sampling.n_steps_each = 100
    config.sampling.snr = 0.316
    return config
