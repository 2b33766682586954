"""NCSNv2 (Song & Ermon, 2020) on LSUN bedroom 128x128: 1086 noise levels from 190 to 0.01.

(The official file misspells `training.continuous`, which leaves it True; this one trains on
discrete noise levels as NCSNv2 does.)
"""

from configs.default_cifar10_configs import set_ncsn_model
from configs.default_lsun_configs import get_default_configs, set_lsun_category


def get_config():
    config = get_default_configs()
    config.training.batch_size = 128
    set_ncsn_model(config, 'ncsnv2_128', num_scales=1086, ema_rate=0.9999, lr=1e-4)
    config.sampling.n_steps_each = 3
    config.sampling.snr = 0.095

    set_lsun_category(config, 'bedroom')
    config.data.image_size = 128

    config.model.sigma_max = 190.
    return config
