"""Inception statistics: the 8-bit quantization of samples, the jitted Inception step over the
mesh, statistics files, and FID / IS / KID from them.

A statistics dict holds ``pool`` (N, 2048) Inception pool features and ``logits`` (N, K); the
evaluation loop (:mod:`.rounds`) writes one per checkpoint and one for the dataset (the
reference). Files written by the official score_sde (keys ``pool_3`` and ``logits``) load as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from score_sde_jax import datasets
from score_sde_jax.evaluation import inception as inception_lib
from score_sde_jax.evaluation import metrics
from score_sde_jax.sharding import jit_batch

Array = jax.Array

_KEY_ALIASES = {"pool_3": "pool"}


QUANTIZE = ("truncate", "round")


def quantize_fn(config) -> Callable[[Array], Array]:
    """Model-space images -> uint8 as ``config.eval.quantize`` says: 'truncate' (official,
    default): clip(255 x, 0, 255) rounded down; 'round' (EDM): clip(255 x + ½, 0, 255) rounded
    down, x = the inverse data scaler's output in [0, 1]."""
    how = str(config.eval.get("quantize", "truncate")).lower()
    if how not in QUANTIZE:
        raise ValueError(f"config.eval.quantize={how!r} must be one of {QUANTIZE}")
    inverse = datasets.get_data_inverse_scaler(config)
    shift = 0.5 if how == "round" else 0.0
    return lambda x: jnp.clip(inverse(x) * 255.0 + shift, 0.0, 255.0).astype(jnp.uint8)


def get_inception_fn(inception: Mapping, mesh: Mesh) -> Callable[[Mapping, Array], dict]:
    """Jitted ``features(inception_variables, images (B, H, W, C) uint8) -> {'pool': (B, 2048),
    'logits': (B, K)}`` over ``mesh`` (the FID Inception network)."""
    net = inception_lib.FIDInceptionV3(num_classes=inception_lib.num_classes_of(inception))
    return jit_batch(lambda variables, images: net.apply(variables, images), mesh, 1, 1)


def load_statistics(path: str | Path) -> dict[str, np.ndarray]:
    """Read a statistics ``.npz`` (the official ``pool_3`` key is renamed ``pool``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception statistics file '{path}' not found; --mode eval computes the reference "
            "statistics of the data when config.eval.ref_stats_path is empty")
    with np.load(path) as data:
        return {_KEY_ALIASES.get(k, k): data[k] for k in data.files}


def metrics_from_statistics(stats: Mapping[str, np.ndarray], ref_stats: Mapping[str, np.ndarray],
                            is_splits: int = 1, kid_block_size: int = 1024) -> dict[str, float]:
    """Inception score of ``stats['logits']``; FID and KID of ``stats['pool']`` vs the reference.

    ``is_splits=1`` is the single score TF-GAN (and the official score_sde evaluation) reports.
    """
    required = (("stats", stats, ("pool", "logits")), ("ref_stats", ref_stats, ("pool",)))
    for name, s, keys in required:
        missing = [k for k in keys if k not in s]
        if missing:
            raise KeyError(f"{name} lacks {missing}; it has {sorted(s)}")
    return {
        "inception_score": metrics.inception_score(stats["logits"], splits=is_splits),
        "fid": metrics.fid_from_features(stats["pool"], ref_stats["pool"]),
        "kid": metrics.kid(stats["pool"], ref_stats["pool"], max_block_size=kid_block_size),
    }
