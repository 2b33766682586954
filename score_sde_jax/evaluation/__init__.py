"""Sample-quality evaluation: the FID Inception-v3 port, Inception statistics, FID / IS / KID."""

from score_sde_jax.evaluation.inception import (
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    inception_apply,
    load_inception_params,
    random_state_dict,
    state_dict_to_variables,
    variables_to_state_dict,
)
from score_sde_jax.evaluation.metrics import (
    fid_from_features,
    frechet_distance,
    gaussian_statistics,
    inception_score,
    kid,
)
from score_sde_jax.evaluation.statistics import (
    compute_statistics,
    load_statistics,
    metrics_from_statistics,
    save_statistics,
)

__all__ = [
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "compute_statistics",
    "fid_from_features",
    "frechet_distance",
    "gaussian_statistics",
    "inception_apply",
    "inception_score",
    "kid",
    "load_inception_params",
    "load_statistics",
    "metrics_from_statistics",
    "random_state_dict",
    "save_statistics",
    "state_dict_to_variables",
    "variables_to_state_dict",
]
