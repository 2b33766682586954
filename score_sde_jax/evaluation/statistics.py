"""Inception statistics of image sets: compute, save, load, and turn into FID / IS / KID.

A statistics dict holds ``pool`` (N, 2048) Inception pool features and ``logits`` (N, K); the
evaluation loop saves one per checkpoint and one for the dataset (the reference). Files written
by the official score_sde (keys ``pool_3`` and ``logits``) load as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from score_sde_jax.evaluation import metrics
from score_sde_jax.evaluation.inception import inception_apply

_KEY_ALIASES = {"pool_3": "pool"}


def _batch_sharding(batch_size: int) -> tuple[NamedSharding | None, NamedSharding | None]:
    """(batch, replicated) shardings over this process's devices, or Nones for one device."""
    devices = jax.local_devices()
    if len(devices) == 1 or batch_size % len(devices):
        return None, None
    mesh = Mesh(np.array(devices), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


def compute_statistics(images: np.ndarray, inception_params: Mapping,
                       batch_size: int = 500) -> dict[str, np.ndarray]:
    """Inception pool features and logits of images (N, H, W, C), C in {1, 3}.

    ``images`` are uint8 in [0, 255] or float in [0, 1] (as the data pipeline and the inverse
    data scaler give them). They are run in batches of ``batch_size`` (the last one padded, so
    only one shape is compiled), split over the local devices when the batch divides evenly.
    Returns ``{'pool': (N, 2048) float32, 'logits': (N, K) float32}``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, 1 or 3) array, got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = images.shape[0]
    batch_size = min(batch_size, n)
    data_sharding, replicated = _batch_sharding(batch_size)
    if replicated is not None:
        inception_params = jax.device_put(inception_params, replicated)
    pools, logits = [], []
    for start in range(0, n, batch_size):
        batch = images[start:start + batch_size]
        size = batch.shape[0]
        if size < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - size, *batch.shape[1:]),
                                                    batch.dtype)])
        if data_sharding is not None:
            batch = jax.device_put(batch, data_sharding)
        out = jax.device_get(inception_apply(inception_params, batch))
        pools.append(np.asarray(out["pool"][:size], np.float32))
        logits.append(np.asarray(out["logits"][:size], np.float32))
    return {"pool": np.concatenate(pools), "logits": np.concatenate(logits)}


def save_statistics(path: str | Path, stats: Mapping[str, np.ndarray]) -> None:
    """Write a statistics dict (``pool``, ``logits``, ...) to an ``.npz`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps numpy from appending '.npz'
        np.savez(f, **{k: np.asarray(v) for k, v in stats.items()})


def load_statistics(path: str | Path) -> dict[str, np.ndarray]:
    """Read a statistics ``.npz`` (the official ``pool_3`` key is renamed ``pool``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception statistics file '{path}' not found; compute it with "
            "score_sde_jax.evaluation.compute_statistics and save_statistics")
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
