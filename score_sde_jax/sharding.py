"""The one home of device placement and multi-host plumbing (L0: imports nothing of the package).

Data parallelism is one code path for 1 device, many local devices and many hosts: a 1-D
``('data',)`` mesh of *all* devices of all processes (:func:`make_mesh`), batches sharded on
axis 0 (:func:`data_sharding`), parameters and states replicated (:func:`replicated`,
:func:`replicate`). XLA inserts the collectives.

Two ways to build a global batch:

* :func:`make_global_batch` -- training: each process holds *its own rows* (its share of the
  global batch, in process order) and contributes them;
* :func:`global_array` -- evaluation and inference: every process holds the *whole*
  host-identical array and places only the rows of its own devices.

Results come back sharded: :func:`local_rows` reads the rows on this process's devices,
:func:`gather` all of them (an all-gather across processes). :func:`any_process`,
:func:`max_over_processes`, :func:`broadcast_from_0` and :func:`barrier` are the host-level
collectives the loops need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["make_mesh", "replicated", "data_sharding", "replicate", "check_batch_size",
           "make_global_batch", "jit_batch", "global_array", "local_rows", "gather",
           "any_process", "max_over_processes", "broadcast_from_0", "barrier", "padded_indices",
           "is_main_process"]


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``('data',)`` mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of ``mesh`` holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
    """Batch axis sharded over 'data' (axis 1 when ``stacked`` as (steps, B, ...))."""
    return NamedSharding(mesh, PartitionSpec(None, "data") if stacked else PartitionSpec("data"))


def replicate(tree, mesh: Mesh):
    """Place a host-identical pytree on every device of ``mesh`` (works across processes)."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def check_batch_size(global_batch: int, mesh: Mesh, key: str = "config.training.batch_size") -> int:
    """``global_batch`` if it is a positive multiple of the mesh's device count; else a
    ValueError naming ``key``."""
    n = mesh.devices.size
    if int(global_batch) < 1:
        raise ValueError(f"{key}={global_batch} must be positive")
    if int(global_batch) % n:
        raise ValueError(f"{key}={global_batch} must be a multiple of the number of devices ({n})")
    return int(global_batch)


def make_global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, stacked: bool = False) -> dict:
    """One global array per key from this process's part (its rows of the global batch, in
    process order): local (B/P, ...) -> global (B, ...) sharded over the mesh; with
    ``stacked`` the arrays are (steps, B/P, ...) -> (steps, B, ...)."""
    sharding, axis = data_sharding(mesh, stacked), int(stacked)
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        shape = list(value.shape)
        shape[axis] *= jax.process_count()
        check_batch_size(shape[axis], mesh, f"the global batch ({key!r})")
        out[key] = jax.make_array_from_process_local_data(sharding, value, tuple(shape))
    return out


def jit_batch(fn: Callable, mesh: Mesh, replicated_args: int, sharded_args: int, out=None) -> Callable:
    """``jax.jit(fn)`` whose first ``replicated_args`` arguments are replicated and next
    ``sharded_args`` are batch-sharded over ``mesh``; outputs are batch-sharded unless ``out``
    gives the output shardings (a pytree prefix of them)."""
    rep, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep,) * replicated_args + (data,) * sharded_args,
                   out_shardings=data if out is None else out)


def global_array(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host-identical (B, ...) array as a global array sharded on its batch axis."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, data_sharding(mesh), lambda i: x[i])


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


def max_over_processes(value: int) -> int:
    """The largest of every process's ``value`` (every process gets it)."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def broadcast_from_0(value: int) -> int:
    """Process 0's ``value`` on every process."""
    if jax.process_count() == 1:
        return int(value)
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def is_main_process() -> bool:
    """True on process 0, the one that writes shared files."""
    return jax.process_index() == 0


def padded_indices(indices: np.ndarray, batch: int) -> np.ndarray:
    """``indices`` padded to ``batch`` entries by repeating the last (one compiled shape)."""
    indices = np.asarray(indices)
    return np.concatenate([indices, np.repeat(indices[-1:], batch - len(indices))])
