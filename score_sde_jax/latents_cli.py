"""``main.py --mode encode`` and ``--mode interpolate``: the probability-flow ODE as an encoder
(paper §4.3), with the EMA parameters of the latest checkpoint in ``workdir`` (or ``step``).

Edge code (reads images and checkpoints, writes ``.npz`` / PNG); the maths is
:func:`sampling.get_ode_encoder`, the ODE sampler as its decoder and :mod:`interpolation`.
Both ODEs use ``config.sampling``'s rtol, atol and solver and the SDE's sampling ε
(``sde_lib.get_sde``); decoding adds no denoising step, so decode(encode(x)) = x up to the
solver's tolerance. Work goes in batches of at most ``config.eval.batch_size`` images.

``images``: comma-separated files or folders. A file is read by
:func:`controllable_cli.load_images` (PNG / JPEG, ``.npz`` / ``.npy`` of (N, H, W[, C]) or
flat points); a folder contributes its ``.png``, ``.jpg``, ``.jpeg``, ``.npz``, ``.npy``
files in name order. Images must have the model's size and channel count (else a ValueError
naming the file's shape and the model's).

encode       ``latents.npz``: ``latents`` (N, *D) float32, the latents z = x(T) in model space;
             ``nfe`` (N,), each image's score evaluations; ``decode_nfe`` (N,), those of the
             decoding batch it was in; ``roundtrip_rms`` (N,), the RMS over entries of
             decode(encode(x)) − x in data space ([0, 1] for images); ``names`` (N,), the file
             (and index in it) of each image; ``step``. Images also give ``roundtrip.png``:
             pairs (image, its decoding), up to 8 pairs a row.
interpolate  two images, ``num`` latents on the slerp (or linear) path z0 → z1, decoded:
             ``interpolation.png`` (a strip, z0 left) and ``interpolation.npz`` (``latents``
             (num, *D), ``alphas``, ``samples`` uint8 and ``samples_float`` in data space,
             ``nfe`` per decoding batch, ``roundtrip_rms`` of the two end points).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

from score_sde_jax import datasets, logging_utils, sampling, sde_lib
from score_sde_jax.controllable_cli import load_images
from score_sde_jax.evaluation import files as io
from score_sde_jax.evaluation.loops import load_ema_params
from score_sde_jax.evaluation.steps import is_flat, score_fn_builder
from score_sde_jax.models import utils as mutils

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npz", ".npy")


def load_image_list(spec: str, config) -> tuple[np.ndarray, list[str]]:
    """The images of ``spec`` (see the module doc) in [0, 1], (N, *D), and a name for each."""
    paths: list[Path] = []
    for item in (s.strip() for s in str(spec).split(",")):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"image folder {path} holds no {' / '.join(IMAGE_SUFFIXES)} files")
            paths += found
        else:
            paths.append(path)
    if not paths:
        raise ValueError(f"no image files in {spec!r}")
    arrays, names = [], []
    for path in paths:
        a = load_images(path, config, convert_channels=False)
        arrays.append(a)
        names += [str(path)] if len(a) == 1 else [f"{path}[{i}]" for i in range(len(a))]
    return np.concatenate(arrays), names


class _Codec:
    """Jitted encoder / decoder of one checkpoint's score network, compiled once per batch size."""

    def __init__(self, config, workdir: str | Path, step: int | None):
        self.params, self.step = load_ema_params(config, workdir, step)
        self.sde, self.eps = sde_lib.get_sde(config)
        self.build = score_fn_builder(config, self.sde)
        self.settings = sampling.ode_settings(config)
        self.data_shape = mutils.data_shape(config)
        self.max_batch = int(config.eval.batch_size)
        self._jitted: dict[tuple[str, int], object] = {}

    def _fn(self, kind: str, batch: int):
        if (kind, batch) not in self._jitted:
            shape = (batch, *self.data_shape)
            if kind == "encode":
                enc = sampling.get_ode_encoder(self.sde, shape, eps=self.eps, **self.settings)
                fn = jax.jit(lambda p, x: enc(self.build(p), x))
            else:
                dec = sampling.get_ode_sampler(self.sde, shape, eps=self.eps, **self.settings)
                fn = jax.jit(lambda p, z: dec(jax.random.PRNGKey(0), self.build(p), z=z))
            self._jitted[kind, batch] = fn
        return self._jitted[kind, batch]

    def run(self, kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``encode`` (x -> z) or ``decode`` (z -> x) of (N, *D) in model space, in batches
        (the last one padded by repeating its last row); returns (out (N, *D), nfe (N,))."""
        n = len(x)
        batch = min(n, self.max_batch)
        fn = self._fn(kind, batch)
        progress = logging_utils.Progress(0, n, desc=kind, unit="image")
        outs, nfes = [], []
        try:
            for start in range(0, n, batch):
                idx = np.minimum(np.arange(start, start + batch), n - 1)
                out, nfe = fn(self.params, x[idx])
                outs.append(np.asarray(out))
                nfes.append(np.broadcast_to(np.asarray(nfe), (batch,)))
                progress.update(min(start + batch, n))
        finally:
            progress.close()
        return np.concatenate(outs)[:n], np.concatenate(nfes)[:n].astype(np.int64)


def _rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((a - b).reshape(len(a), -1) ** 2, axis=1))


def encode(config, workdir: str | Path, images: str, out_dir: str | Path,
           step: int | None = None) -> dict[str, Path | None]:
    """Encode the images of ``images``, decode the latents back and write ``latents.npz``
    (and ``roundtrip.png``); see the module doc. Returns ``{'npz': path, 'png': path or None}``."""
    x01, names = load_image_list(images, config)
    codec = _Codec(config, workdir, step)
    z, nfe = codec.run("encode", datasets.get_data_scaler(config)(x01))
    decoded, decode_nfe = codec.run("decode", z)
    decoded = np.asarray(datasets.get_data_inverse_scaler(config)(decoded), np.float32)
    rms = _rms(decoded, x01)
    out_dir = Path(out_dir)
    npz = io.savez_atomic(out_dir / "latents.npz", latents=z.astype(np.float32), nfe=nfe,
                          decode_nfe=decode_nfe, roundtrip_rms=rms, names=np.asarray(names),
                          step=np.int64(codec.step))
    png = None
    if not is_flat(config):
        pairs = np.stack([x01, np.clip(decoded, 0.0, 1.0)], axis=1).reshape(-1, *x01.shape[1:])
        png = io.save_image_grid(pairs, out_dir / "roundtrip.png", nrow=2 * min(8, len(x01)))
    logging.info("encoded %d image(s) with the checkpoint of step %d: %.0f NFE per image (max %d); "
                 "round-trip RMS error %.3g (max %.3g, in data space)", len(x01), codec.step,
                 nfe.mean(), nfe.max(), rms.mean(), rms.max())
    return {"npz": npz, "png": png}


def interpolate(config, workdir: str | Path, images: str, num: int, out_dir: str | Path,
                step: int | None = None, method: str = "slerp") -> dict[str, Path | None]:
    """Decode ``num`` latents on the ``method`` path ('slerp' or 'linear') between the latents
    of the two images of ``images``; writes ``interpolation.{png,npz}`` (see the module doc).
    Returns ``{'npz': path, 'png': path or None}``."""
    if method not in sampling.INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {method!r}; valid: {sorted(sampling.INTERPOLATIONS)}")
    if int(num) < 2:
        raise ValueError(f"an interpolation needs num >= 2 images (the two end points), got {num}")
    x01, names = load_image_list(images, config)
    if len(x01) != 2:
        raise ValueError(f"interpolation needs exactly two images; {images!r} holds {len(x01)}")
    codec = _Codec(config, workdir, step)
    z, _ = codec.run("encode", datasets.get_data_scaler(config)(x01))
    alphas = np.linspace(0.0, 1.0, int(num))
    path = np.asarray(sampling.INTERPOLATIONS[method](z[0], z[1], alphas), np.float32)
    decoded, nfe = codec.run("decode", path)
    x = np.asarray(datasets.get_data_inverse_scaler(config)(decoded), np.float32)
    rms = _rms(x[[0, -1]], x01)
    out_dir = Path(out_dir)
    stem = out_dir / "interpolation"
    png = None
    if is_flat(config):
        npz = io.savez_atomic(stem.with_suffix(".npz"), latents=path, alphas=alphas, samples=x,
                              nfe=nfe, roundtrip_rms=rms, names=np.asarray(names))
        if x.shape[1] == 2:
            png = io.save_scatter(x, stem.with_suffix(".png"), f"{method} path")
    else:
        npz = io.savez_atomic(stem.with_suffix(".npz"), latents=path, alphas=alphas,
                              samples=io.to_uint8(x), samples_float=x, nfe=nfe, roundtrip_rms=rms,
                              names=np.asarray(names))
        png = io.save_image_grid(np.clip(x, 0.0, 1.0), stem.with_suffix(".png"), nrow=int(num))
    logging.info("%s path of %d latents between %s and %s decoded (%d NFE per batch); end points' "
                 "round-trip RMS error %.3g, %.3g", method, int(num), names[0], names[1],
                 nfe.max(), rms[0], rms[1])
    return {"npz": npz, "png": png}


__all__ = ["encode", "interpolate", "load_image_list"]
