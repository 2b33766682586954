"""``main.py --mode sample`` for controllable generation: inpaint, colorize, sample a class.

Edge code (reads PNG / npz inputs and checkpoints, writes PNG / npz); the maths is in
:mod:`score_sde_jax.controllable_generation`. Every function samples with the EMA parameters
of the latest checkpoint in ``workdir`` (or ``step``), with ``config.sampling``'s predictor,
corrector, snr, ``n_steps_each``, ``probability_flow`` and ``noise_removal``, in global batches of
at most ``config.eval.batch_size`` sharded over every device of every process (parameters
replicated), input i drawing its noise from its own key ``fold_in(rng, i)``: the outputs do not
depend on the device count (the Langevin corrector's step size, a batch mean, depends on the
batch).

Inputs (images in [0, 1]: uint8 files are divided by 255):
  image   a PNG / JPEG (one image), or ``.npz`` / ``.npy`` holding (N, H, W[, C]) or (H, W[, C])
          (npz key 'image', 'images', 'x' or its only array). H, W must be the model's
          ``data.image_size``; grey images are repeated to the model's channels. For flat data
          (``data.dim`` = D), an ``.npz`` / ``.npy`` of (N, D) or (D,) points.
  mask    same formats; 1 (white) = known, 0 (black) = to inpaint, values > 0.5 count as 1;
          (H, W), (H, W, 1) or (H, W, C), per image or one for all; flat data: (D,) or (N, D).
A shape that does not fit the model is a ValueError naming the file, its shape and the model's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from PIL import Image

from score_sde_jax import controllable_generation as cg
from score_sde_jax import datasets, logging_utils, prng, sampling, sde_lib, train_lib
from score_sde_jax.evaluation import files as io
from score_sde_jax.evaluation import sharding
from score_sde_jax.evaluation.loops import load_ema_params
from score_sde_jax.evaluation.steps import as_variables, is_flat, score_fn_builder
from score_sde_jax.models import utils as mutils

_NPZ_KEYS = ("image", "images", "x", "data", "mask")


# ----------------------------------------------------------------------------- reading inputs
def _read_array(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        try:
            with Image.open(path) as im:
                return np.asarray(im)[None]
        except OSError as e:  # PIL.UnidentifiedImageError: not an image at all
            raise ValueError(f"{what} file {path} is not a readable {suffix} image ({e})") from e
    if suffix == ".npy":
        try:
            return np.load(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"{what} file {path} is not a readable .npy array ({e})") from e
    if suffix == ".npz":
        arrays = io.load_npz(path)
        key = next((k for k in _NPZ_KEYS if k in arrays), None)
        if key is None and len(arrays) == 1:
            key = next(iter(arrays))
        if key is None:
            raise ValueError(f"{what} file {path} holds {sorted(arrays)}; expected one array or "
                             f"one named {' / '.join(_NPZ_KEYS)}")
        return arrays[key]
    raise ValueError(f"{what} file {path}: unsupported format {suffix!r} (use .png, .jpg, .npz, .npy)")


def _to_unit(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


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
    a = _to_unit(_read_array(path, "image"))
    shape = mutils.data_shape(config)
    if is_flat(config):
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


def load_mask(path: str | Path, data_shape: tuple[int, ...]) -> np.ndarray:
    """A {0, 1} mask broadcast to ``data_shape`` (N, *D) of the loaded data (see module doc)."""
    m = _to_unit(_read_array(path, "mask"))
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


# ----------------------------------------------------------------------------- running in batches
def _in_batches(config, n: int, make: Callable[[int], Callable], arrays: tuple, rng,
                params: tuple) -> np.ndarray:
    """Run ``make(batch)(*params, keys (batch,), *chunks)`` over the device mesh on global
    batches of at most eval.batch_size rows (a multiple of the device count; the last one
    padded), with the per-input keys ``fold_in(rng, i)``; params are replicated."""
    mesh = train_lib.make_mesh()
    devices = mesh.devices.size
    batch = min(sharding.check_batch(config.eval.batch_size, mesh), -(-n // devices) * devices)
    fn = make(batch)

    def run(*args):
        *weights, key, indices = args[:len(params) + 2]
        return fn(*weights, prng.example_keys(key, indices), *args[len(params) + 2:])

    jitted = logging_utils.announce_compile(
        sharding.jit_batch(run, mesh, len(params) + 1, 1 + len(arrays)),
        f"sampler (batches of {batch})")
    weights = sharding.replicate(params, mesh)
    out, rounds = [], math.ceil(n / batch)
    progress = logging_utils.Progress(0, rounds, desc="sample", unit="batch")
    for i in range(rounds):
        idx = np.minimum(np.arange(i * batch, (i + 1) * batch), n - 1)  # pad the last chunk
        x = jitted(*weights, rng, sharding.global_array(idx, mesh),
                   *(sharding.global_array(a[idx], mesh) for a in arrays))
        out.append(sharding.gather(x))
        progress.update(i + 1)
    progress.close()
    return np.concatenate(out)[:n]


def _write(config, x: np.ndarray, out_dir: str | Path, name: str, **extra) -> dict[str, Path]:
    """Save samples (model space) as ``{name}.npz`` and ``{name}.png`` in ``out_dir``."""
    x = np.asarray(datasets.get_data_inverse_scaler(config)(x), np.float32)
    stem = Path(out_dir) / name
    paths = {"png": None}
    if is_flat(config):
        paths["npz"] = io.savez_atomic(stem.with_suffix(".npz"), samples=x, **extra)
        if x.shape[1] == 2:
            paths["png"] = io.save_scatter(x, stem.with_suffix(".png"), name)
    else:
        paths["npz"] = io.savez_atomic(stem.with_suffix(".npz"), samples=io.to_uint8(x),
                                       samples_float=x, **extra)
        paths["png"] = io.save_image_grid(np.clip(x, 0.0, 1.0), stem.with_suffix(".png"))
    logging.info("wrote %s", ", ".join(str(p) for p in paths.values() if p))
    return paths


def _model(config, workdir, step):
    params, step = load_ema_params(config, workdir, step)
    sde, eps = sde_lib.get_sde(config)
    return params, step, sde, eps, score_fn_builder(config, sde)


# ----------------------------------------------------------------------------- the three modes
def _draws(images: np.ndarray, num_samples: int | None, path) -> np.ndarray:
    """The inputs repeated to ``num_samples`` draws: one input is repeated, N inputs need
    ``num_samples`` None or N."""
    if num_samples is None or num_samples == len(images):
        return images
    if len(images) != 1:
        raise ValueError(f"--num_samples={num_samples} but {path} holds {len(images)} inputs; "
                         "give one input (drawn num_samples times) or leave --num_samples out")
    return np.repeat(images, int(num_samples), axis=0)


def inpaint(config, workdir: str | Path, image_path: str | Path, mask_path: str | Path,
            out_dir: str | Path, step: int | None = None,
            num_samples: int | None = None) -> dict[str, Path]:
    """Inpaint the images of ``image_path`` where ``mask_path`` is 0 (PC inpainter); a single
    image is inpainted ``num_samples`` times (independent draws) when that is given.

    Writes ``inpainted.{png,npz}`` and ``inpaint_input.png`` (the known pixels, unknown black).
    """
    images = _draws(load_images(image_path, config), num_samples, image_path)
    mask = load_mask(mask_path, images.shape)
    params, step, sde, eps, build = _model(config, workdir, step)
    scaler = datasets.get_data_scaler(config)

    def make(batch):
        fn = cg.get_pc_inpainter(sde, (batch, *images.shape[1:]), eps=eps, **sampling.pc_settings(config))
        return lambda p, r, y, m: fn(r, build(p), scaler(y), m)

    rng = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 3), step)
    x = _in_batches(config, len(images), make, (images, mask), rng, (params,))
    if not is_flat(config):
        io.save_image_grid(images * mask, Path(out_dir) / "inpaint_input.png")
    return _write(config, x, out_dir, "inpainted", mask=mask)


def colorize(config, workdir: str | Path, image_path: str | Path, out_dir: str | Path,
             step: int | None = None, num_samples: int | None = None) -> dict[str, Path]:
    """Colorize grey images (an RGB input is reduced to its grey level (R+G+B)/3); a single
    image is colorized ``num_samples`` times when that is given.

    Needs an RGB model. Writes ``colorized.{png,npz}`` and ``colorize_input.png``.
    """
    if is_flat(config) or mutils.data_shape(config)[-1] != 3:
        raise ValueError(f"colorization needs a model of RGB images; config.data gives data shape "
                         f"{mutils.data_shape(config)}")
    images = _draws(load_images(image_path, config), num_samples, image_path)
    gray = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    params, step, sde, eps, build = _model(config, workdir, step)
    scaler = datasets.get_data_scaler(config)

    def make(batch):
        fn = cg.get_pc_colorizer(sde, (batch, *images.shape[1:]), eps=eps, **sampling.pc_settings(config))
        return lambda p, r, g: fn(r, build(p), scaler(g))

    rng = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 4), step)
    x = _in_batches(config, len(gray), make, (gray,), rng, (params,))
    io.save_image_grid(gray, Path(out_dir) / "colorize_input.png")
    return _write(config, x, out_dir, "colorized")


def classifier_config_from_workdir(classifier_workdir: str | Path) -> ml_collections.ConfigDict:
    """The training config stored in the latest checkpoint of ``classifier_workdir``."""
    from score_sde_jax import checkpoints

    for directory in checkpoints.step_dirs(classifier_workdir):
        last = checkpoints.latest_step(directory)
        if last is not None:
            saved = checkpoints.read_meta(directory, last).get("config")
            if saved:
                return ml_collections.ConfigDict(saved)
    raise FileNotFoundError(f"no checkpoint with a stored config in {classifier_workdir}; pass the "
                            "classifier's config explicitly (--classifier_config)")


def _check_classifier(config, clf_config, label: int) -> None:
    if clf_config.training.get("task", "score") != "classifier":
        raise ValueError("the classifier's config has config.training.task="
                         f"{clf_config.training.get('task', 'score')!r}, not 'classifier'")
    keys = ("sigma_min", "sigma_max") if str(config.training.sde).lower() == "vesde" \
        else ("beta_min", "beta_max")
    mine = [str(config.training.sde).lower()] + [float(config.model[k]) for k in keys]
    theirs = [str(clf_config.training.sde).lower()] + [float(clf_config.model.get(k, -1)) for k in keys]
    if mine != theirs:
        raise ValueError(f"the classifier was trained for SDE {theirs} but the score model uses {mine} "
                         f"(config.training.sde, config.model.{keys[0]}, {keys[1]})")
    if mutils.data_shape(clf_config) != mutils.data_shape(config) or \
            bool(clf_config.data.centered) != bool(config.data.centered):
        raise ValueError(f"the classifier takes data of shape {mutils.data_shape(clf_config)} "
                         f"(centered={clf_config.data.centered}); the score model's is "
                         f"{mutils.data_shape(config)} (centered={config.data.centered})")
    n = int(clf_config.model.num_classes)
    if not 0 <= int(label) < n:
        raise ValueError(f"label {label} is not a class of the classifier (0 .. {n - 1})")


def sample_class(config, workdir: str | Path, classifier_workdir: str | Path, label: int,
                 scale: float, out_dir: str | Path, num_samples: int | None = None,
                 classifier_config=None, step: int | None = None,
                 classifier_step: int | None = None) -> dict[str, Path]:
    """``num_samples`` (default ``config.eval.batch_size``) samples of class ``label`` with
    classifier guidance s + scale ∇ log p_t(label | x) (PC, or the PF-ODE when
    ``config.sampling.method == 'ode'``). The classifier's config is read from its checkpoint
    unless given. Writes ``class_{label}_samples.{png,npz}``."""
    from score_sde_jax.classifier_lib import classifier_logp_fn

    clf_config = classifier_config or classifier_config_from_workdir(classifier_workdir)
    _check_classifier(config, clf_config, label)
    params, step, sde, eps, build = _model(config, workdir, step)
    clf_params, _ = load_ema_params(clf_config, classifier_workdir, classifier_step)
    clf_sde, _ = sde_lib.get_sde(clf_config)
    classifier = mutils.get_model(clf_config)
    n = int(num_samples or config.eval.batch_size)
    shape = mutils.data_shape(config)

    def make(batch):
        if str(config.sampling.method).lower() == "ode":
            fn = cg.get_ode_conditional_sampler(sde, (batch, *shape), eps=eps,
                                                **sampling.ode_settings(config))
        else:
            fn = cg.get_pc_conditional_sampler(sde, (batch, *shape), eps=eps,
                                               **sampling.pc_settings(config))

        def run(p, cp, r, labels):
            logp = classifier_logp_fn(classifier, as_variables(cp), clf_sde)
            return fn(r, build(p), logp, labels, scale)[0]

        return run

    rng = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 5), step)
    labels = np.full((n,), int(label), np.int32)
    x = _in_batches(config, n, make, (labels,), rng, (params, clf_params))
    return _write(config, x, out_dir, f"class_{int(label)}_samples",
                  labels=labels, scale=np.float32(scale))


__all__ = ["inpaint", "colorize", "sample_class", "load_images", "load_mask",
           "classifier_config_from_workdir"]
