"""2-D Gaussian mixture with the MLP score network, VP SDE (continuous time).

Three isotropic components with unequal weights; the exact perturbed densities and scores of
this mixture are known (`score_sde_jax.analytic.GaussianMixture(weights, means, covs)` with
covs = std² I), so samples, scores and likelihoods can be checked against the truth.
Training draws fresh samples each step (no fixed data set). Switch SDE with
`--config.training.sde=vesde --config.model.embedding_type=fourier
--config.model.scale_by_sigma=True` (sigma_max 10 covers the largest pairwise distance).
"""

from configs.default_toy_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = 'vpsde'

    data = config.data
    data.dataset = 'GMM'
    data.gmm_weights = (0.2, 0.3, 0.5)
    data.gmm_means = ((-2., -1.), (2., -1.), (0., 2.))
    data.gmm_stds = (0.3, 0.3, 0.3)

    config.model.sigma_max = 10.
    return config
