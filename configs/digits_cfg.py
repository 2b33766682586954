"""Label-conditional digits (configs/digits.py) for classifier-free guidance: the DDPM++ of
digits.py with a class embedding of the 10 digits + the null label, trained with label dropout
0.1, sampled with guidance weight w = 1 at every noise level (score_sde_jax/guidance.py).

    python main.py --config configs/digits_cfg.py --workdir runs/digits_cfg --mode train
"""

from configs.digits import get_config as _digits


def get_config():
    config = _digits()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1
    config.sampling.cfg_scale = 1.
    config.sampling.guidance_interval = (0., float('inf'))
    return config
