"""Evaluation over the training mesh: the batch axis sharded over every device of every process,
parameters replicated (``train_lib.make_mesh``, ``replicate``, ``data_sharding``).

Every process passes the same *global* arrays (host-identical: every process reads the whole
evaluation batch, and places only its own rows on its devices); the results come back sharded,
and each process reads only the rows on its own devices (:func:`local_rows`) or, for small
results, all of them (:func:`gather`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from score_sde_jax import train_lib

BATCH_KEY = "config.eval.batch_size"


def check_batch(batch: int, mesh: Mesh, key: str = BATCH_KEY) -> int:
    """``batch`` (the global batch) if it is a positive multiple of the mesh's device count."""
    if int(batch) < 1:
        raise ValueError(f"{key}={batch} must be positive")
    train_lib.check_batch_size(int(batch), mesh, key)
    return int(batch)


def jit_batch(fn: Callable, mesh: Mesh, replicated: int, sharded: int, out=None) -> Callable:
    """``jax.jit(fn)`` whose first ``replicated`` arguments are replicated and next ``sharded``
    are batch-sharded over ``mesh``; outputs are batch-sharded unless ``out`` gives the
    output shardings (a pytree prefix of them)."""
    rep, data = train_lib.replicated(mesh), train_lib.data_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep,) * replicated + (data,) * sharded,
                   out_shardings=data if out is None else out)


def global_array(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host-identical (B, ...) array as a global array sharded on its batch axis."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, train_lib.data_sharding(mesh), lambda i: x[i])


def replicate(tree, mesh: Mesh):
    """``train_lib.replicate`` (a host-identical pytree on every device of ``mesh``)."""
    return train_lib.replicate(tree, mesh)


def local_rows(x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """(row positions (n,), rows (n, ...)) of the global array ``x`` that live on this process's
    devices, in row order (each row once)."""
    parts = {}
    for shard in x.addressable_shards:
        start = (shard.index[0].start or 0) if shard.index else 0
        parts.setdefault(start, np.asarray(shard.data))
    starts = sorted(parts)
    rows = np.concatenate([parts[s] for s in starts])
    positions = np.concatenate([np.arange(s, s + len(parts[s])) for s in starts])
    return positions, rows


def gather(x) -> np.ndarray:
    """The whole global array on every process (an all-gather across processes)."""
    if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def any_process(flags: Sequence[bool]) -> np.ndarray:
    """Elementwise OR of a boolean vector over all processes (every process gets the result)."""
    flags = np.asarray(flags, bool)
    if jax.process_count() == 1:
        return flags
    return np.asarray(multihost_utils.process_allgather(flags)).any(axis=0)


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def padded_indices(indices: np.ndarray, batch: int) -> np.ndarray:
    """``indices`` padded to ``batch`` entries by repeating the last (one compiled shape)."""
    indices = np.asarray(indices)
    return np.concatenate([indices, np.repeat(indices[-1:], batch - len(indices))])
