"""What every mode that draws from a trained checkpoint shares: ONE path from a checkpoint to a
score function (:func:`load_model`), ONE batched loop over the device mesh (:func:`run_batches`),
ONE writer of samples (:func:`write`), and the readers of the images a user passes in.

The loop: work is split into global batches of at most ``config.eval.batch_size`` rows (a
multiple of the device count), sharded over every device of every process, with the
parameters replicated; row i of the work draws its randomness from its own key
``fold_in(rng, i)``, so an output depends on its row alone (and on the batch only for the
batch-coupled samplers, :func:`sampling.batch_coupled`), never on the number of devices.

Inputs (images in [0, 1]: uint8 files are divided by 255), read by :func:`load_images`:
  image   a PNG / JPEG (one image), or ``.npz`` / ``.npy`` holding (N, H, W[, C]) or (H, W[, C])
          (npz key 'image', 'images', 'x' or its only array). H, W must be the model's
          ``data.image_size``; grey images are repeated to the model's channels. For flat data
          (``data.dim`` = D), an ``.npz`` / ``.npy`` of (N, D) or (D,) points.
  mask    same formats; 1 (white) = known, 0 (black) = to inpaint, values > 0.5 count as 1;
          (H, W), (H, W, 1) or (H, W, C), per image or one for all; flat data: (D,) or (N, D).
A shape that does not fit the model, or a NaN / inf value, is a ValueError naming the file (read
before any checkpoint is loaded or solver compiled).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from score_sde_jax import checkpoints, datasets, eval_lib, files, logging_utils, prng, sde_lib, sharding
from score_sde_jax.models import utils as mutils

BATCH_KEY = "config.eval.batch_size"


# ----------------------------------------------------------------------------- checkpoint -> score_fn
@dataclasses.dataclass
class Model:
    """A trained checkpoint ready to sample: EMA parameters (replicated over ``mesh``), its step,
    the SDE and sampling ε of the config, and ``build(params) -> score_fn(x, t)``."""

    config: object
    params: Mapping
    step: int
    sde: sde_lib.SDE
    eps: float
    build: Callable
    mesh: Mesh


def load_model(config, workdir: str | Path, step: int | None = None,
               mesh: Mesh | None = None) -> Model:
    """The EMA parameters of the checkpoint at ``step`` (latest when None) of ``workdir``
    (:func:`checkpoints.load_ema_params`: no optimizer state is built or read), placed on
    ``mesh`` (default: every device of every process)."""
    mesh = mesh or sharding.make_mesh()
    params, step = checkpoints.load_ema_params(config, workdir, step)
    sde, eps = sde_lib.get_sde(config)
    return Model(config, sharding.replicate(params, mesh), step, sde, eps,
                 eval_lib.score_fn_builder(config, sde), mesh)


# ----------------------------------------------------------------------------- the batched loop
def batch_size(config, mesh: Mesh, n: int | None = None) -> int:
    """``config.eval.batch_size`` (checked to be a multiple of the device count), or fewer rows
    when ``n`` rows of work need less (rounded up to the device count)."""
    batch = sharding.check_batch_size(config.eval.batch_size, mesh, BATCH_KEY)
    if n is None:
        return batch
    devices = mesh.devices.size
    return min(batch, -(-int(n) // devices) * devices)


def index_batches(indices: Sequence[int], batch: int) -> list[np.ndarray]:
    """``indices`` in batches of ``batch`` rows, the last one padded by repeating its last row
    (one compiled shape)."""
    indices = np.asarray(indices)
    return [sharding.padded_indices(indices[i:i + batch], batch) for i in range(0, len(indices), batch)]


def keyed(fn: Callable, n_weights: int) -> Callable:
    """``fn(*weights, keys (B,), *rows)`` as ``(*weights, rng, indices (B,), *rows)``: row b gets
    the key ``fold_in(rng, indices[b])`` (:func:`prng.example_keys`)."""

    def run(*args):
        weights, (rng, indices), rows = args[:n_weights], args[n_weights:n_weights + 2], args[n_weights + 2:]
        return fn(*weights, prng.example_keys(rng, indices), *rows)

    return run


def run_batches(fn: Callable, model: Model, batches: list[np.ndarray], rng: jax.Array,
                weights: tuple = (), arrays: tuple = (), what: str = "sampler",
                unit: str = "batch") -> list:
    """The outputs of :func:`iter_batches`, all batches in one list."""
    return list(iter_batches(fn, model, batches, rng, weights, arrays, what, unit))


def iter_batches(fn: Callable, model: Model, batches: list[np.ndarray], rng: jax.Array,
                 weights: tuple = (), arrays: tuple = (), what: str = "sampler",
                 unit: str = "batch") -> Iterator:
    """The ONE mesh loop: ``fn(*weights, rng, indices (B,), *rows)`` jitted over ``model.mesh``
    (weights and rng replicated, indices and the rows ``a[indices]`` of each of ``arrays``
    sharded), run on every batch of ``batches``; yields each batch's outputs gathered to NumPy
    on every process, one batch at a time (a caller that writes them out holds one batch).
    ``weights`` are already replicated (``model.params``, ...). Scalar outputs (a batch's NFE)
    are repeated per row, so that every output is sharded like the batch."""
    mesh, n_weights = model.mesh, len(weights) + 1

    def per_row(*args):
        rows = args[n_weights].shape  # the indices
        return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, rows) if jnp.ndim(v) == 0 else v,
                                      fn(*args))

    jitted = logging_utils.announce_compile(
        sharding.jit_batch(per_row, mesh, n_weights, 1 + len(arrays)),
        f"{what} (batches of {len(batches[0]) if batches else 0})")
    progress = logging_utils.Progress(0, len(batches), desc=what.split(" ")[0], unit=unit)
    try:
        for i, idx in enumerate(batches):
            result = jitted(*weights, rng, sharding.global_array(idx, mesh),
                            *(sharding.global_array(np.asarray(a)[idx], mesh) for a in arrays))
            yield jax.tree_util.tree_map(sharding.gather, result)
            progress.update(i + 1)
    finally:
        progress.close()


# ----------------------------------------------------------------------------- the writer
def write(config, x: np.ndarray, stem: str | Path, title: str = "samples",
          **extra: np.ndarray) -> dict[str, Path | None]:
    """Samples in model space -> data space ([0, 1] images), written by process 0 as
    ``{stem}.npz`` and ``{stem}.png`` (:func:`files.write_samples`); returns both paths."""
    x = np.asarray(datasets.get_data_inverse_scaler(config)(np.asarray(x, np.float32)), np.float32)
    stem = Path(stem)
    if not sharding.is_main_process():
        return {"npz": stem.with_suffix(".npz"), "png": stem.with_suffix(".png")}
    paths = files.write_samples(stem, x, title, **extra)
    logging.info("wrote %s", ", ".join(str(p) for p in paths.values() if p))
    return paths


# ----------------------------------------------------------------------------- reading inputs
def _as_nhwc(a: np.ndarray, size: int, path, what: str, model: str) -> np.ndarray:
    """(H, W), (H, W, C), (N, H, W) or (N, H, W, C) -> (N, H, W, C), checking H = W = size."""
    shape = a.shape
    if a.ndim == 2:
        a = a[None, ..., None]
    elif a.ndim == 3:
        a = a[None] if a.shape[:2] == (size, size) else a[..., None]
    if a.ndim != 4 or a.shape[1:3] != (size, size):
        raise ValueError(f"{what} file {path}: shape {shape} does not fit the model, which takes "
                         f"{model}; resize the input first")
    return a[..., :3] if a.shape[-1] == 4 else a  # RGBA: drop alpha


def _model_text(config) -> str:
    size, c = config.data.image_size, config.data.num_channels
    return (f"{size}x{size} images with {c} channel(s) (config.data.image_size={size}, "
            f"config.data.num_channels={c})")


def load_images(path: str | Path, config, convert_channels: bool = True) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] shaped for ``config``'s model, or points (N, D) for flat data.

    ``convert_channels=False``: an image whose channel count is not the model's is an error
    (instead of RGB -> grey or grey -> RGB)."""
    a = files.to_unit(files.read_array(path, "image"))
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if bad:  # the ODE solver would fail deep inside, or give NaN latents
        raise ValueError(f"image file {path} holds {bad} non-finite value(s) (NaN or inf) of "
                         f"{np.size(a)}; images must be finite numbers")
    shape = mutils.data_shape(config)
    if mutils.is_flat(config):
        a = a[None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1:] != shape:
            raise ValueError(f"image file {path}: points of shape {a.shape} do not fit the model's "
                             f"data shape {shape} (expected (N, {shape[0]}) or ({shape[0]},))")
        return a
    a = _as_nhwc(a, shape[0], path, "image", _model_text(config))
    channels = shape[-1]
    if not convert_channels and a.shape[-1] != channels:
        raise ValueError(f"image file {path}: shape {a.shape} does not fit the model, which takes "
                         f"{_model_text(config)}")
    if a.shape[-1] == 3 and channels == 1:
        a = a.mean(axis=-1, keepdims=True)
    if a.shape[-1] == 1 and channels > 1:
        a = np.repeat(a, channels, axis=-1)
    if a.shape[-1] != channels:
        raise ValueError(f"image file {path} has {a.shape[-1]} channels; the model takes "
                         f"{_model_text(config)}")
    return a


def load_image_list(spec: str, config) -> tuple[np.ndarray, list[str]]:
    """The images of ``spec`` (comma-separated files or folders, :func:`files.list_files`) in
    [0, 1], (N, *D), with a name for each (the file, and the index in it for arrays)."""
    arrays, names = [], []
    for path in files.list_files(spec):
        a = load_images(path, config, convert_channels=False)
        arrays.append(a)
        names += [str(path)] if len(a) == 1 else [f"{path}[{i}]" for i in range(len(a))]
    return np.concatenate(arrays), names


def load_mask(path: str | Path, data_shape: tuple[int, ...]) -> np.ndarray:
    """A {0, 1} mask broadcast to ``data_shape`` (N, *D) of the loaded data (see module doc)."""
    m = files.to_unit(files.read_array(path, "mask"))
    n, d = data_shape[0], tuple(data_shape[1:])
    want = (f"one mask of shape {d[:-1]} or {d}, or one per input" if len(d) == 3
            else f"one mask of shape {d} or {(n, *d)}")
    if len(d) == 3:
        m = _as_nhwc(m, d[0], path, "mask", f"{d[0]}x{d[1]} images; give {want}")
        if m.shape[-1] == 3 and d[-1] != 3:
            m = m.mean(axis=-1, keepdims=True)
    elif m.ndim == 1:
        m = m[None]
    if m.ndim != len(data_shape) or m.shape[0] not in (1, n) or m.shape[1:-1] != d[:-1] \
            or m.shape[-1] not in (1, d[-1]):
        raise ValueError(f"mask file {path}: shape {m.shape} does not match the data {data_shape}; "
                         f"give {want}")
    return np.broadcast_to((m > 0.5).astype(np.float32), data_shape).copy()
