"""``main.py --mode eval``: the evaluation loop over checkpoints (:mod:`.loops`, :mod:`.rounds`),
the FID Inception-v3 port, Inception statistics, FID / IS / KID.

The names below are loaded on first use (PEP 562), so that ``python -m
score_sde_jax.evaluation.inception`` runs its module once, and importing the package (as
``run_lib`` does for its ``evaluate`` alias) does not load the Inception network.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "loops": ("evaluate", "checkpoint_steps", "summary_table"),
    "inception": ("FID_WEIGHTS_URL", "FIDInceptionV3", "inception_apply", "load_inception_params",
                  "random_state_dict", "state_dict_to_variables", "variables_to_state_dict"),
    "metrics": ("fid_from_features", "frechet_distance", "gaussian_statistics",
                "inception_score", "kid"),
    "statistics": ("get_inception_fn", "load_statistics", "metrics_from_statistics",
                   "quantize_fn"),
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
    from score_sde_jax.evaluation.loops import checkpoint_steps, evaluate, summary_table  # noqa: F401
    from score_sde_jax.evaluation.metrics import (  # noqa: F401
        fid_from_features,
        frechet_distance,
        gaussian_statistics,
        inception_score,
        kid,
    )
    from score_sde_jax.evaluation.statistics import (  # noqa: F401
        get_inception_fn,
        load_statistics,
        metrics_from_statistics,
        quantize_fn,
    )


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
