"""NCSN++ cont. on FFHQ 1024x1024 with the VE SDE: the paper's first 1024px samples from a
score-based model (nf 16, 8 resolutions, 1 block each, sigma_max 1348, 2000 noise scales).

Set `data.path` to a folder of 1024px FFHQ images (or an .npz file).
"""

from configs.default_cifar10_configs import set_pc_sampling
from configs.default_ffhq_configs import get_default_configs
from configs.default_lsun_configs import set_ncsnpp_256_model


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.training.continuous = True

    set_pc_sampling(config.sampling, 'reverse_diffusion', 'langevin')

    model = config.model
    set_ncsnpp_256_model(model)
    model.ema_rate = 0.9999
    model.nf = 16
    model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
    model.num_res_blocks = 1
    model.embedding_type = 'fourier'
    return config
