"""Sample-quality evaluation: the FID Inception-v3 port, Inception statistics, FID / IS / KID.

The names below are loaded on first use (PEP 562), so that ``python -m
score_sde_jax.evaluation.inception`` runs its module once, and ``evaluation.files`` (PNG / npz
helpers used by training) does not pull in the Inception network.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "inception": ("FID_WEIGHTS_URL", "FIDInceptionV3", "inception_apply", "load_inception_params",
                  "random_state_dict", "state_dict_to_variables", "variables_to_state_dict"),
    "metrics": ("fid_from_features", "frechet_distance", "gaussian_statistics",
                "inception_score", "kid"),
    "statistics": ("compute_statistics", "load_statistics", "metrics_from_statistics",
                   "save_statistics"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)

if TYPE_CHECKING:
    from score_sde_jax.evaluation.inception import (  # noqa: F401
        FID_WEIGHTS_URL,
        FIDInceptionV3,
        inception_apply,
        load_inception_params,
        random_state_dict,
        state_dict_to_variables,
        variables_to_state_dict,
    )
    from score_sde_jax.evaluation.metrics import (  # noqa: F401
        fid_from_features,
        frechet_distance,
        gaussian_statistics,
        inception_score,
        kid,
    )
    from score_sde_jax.evaluation.statistics import (  # noqa: F401
        compute_statistics,
        load_statistics,
        metrics_from_statistics,
        save_statistics,
    )


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
