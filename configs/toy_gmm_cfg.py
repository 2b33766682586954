"""Label-conditional 2-D Gaussian mixture for classifier-free guidance (score_sde_jax/guidance.py).

The mixture of configs/toy_gmm.py with overlapping components (std 1 instead of 0.3: the exact
Bayes classifier p(k | x) is right on ~92 % of the samples of component 0, so guidance has
something to sharpen), the MLP conditioned on the component index (3 classes + the null label),
trained with label dropout 0.1, and sampled with guidance weight w = 1 at every noise level.
The exact conditional scores are `analytic.GaussianMixture.conditional_score_fn`.
"""

from configs.toy_gmm import get_config as _toy_gmm


def get_config():
    config = _toy_gmm()
    config.data.gmm_stds = (1., 1., 1.)
    config.model.num_classes = 3
    config.training.label_dropout = 0.1
    config.sampling.cfg_scale = 1.
    config.sampling.guidance_interval = (0., float('inf'))
    return config
