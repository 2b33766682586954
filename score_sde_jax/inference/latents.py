"""``main.py --mode encode`` and ``--mode interpolate``: the probability-flow ODE as an encoder
(paper §4.3), with the EMA parameters of the latest checkpoint in ``workdir`` (or ``step``),
over every device of every process (the one mesh loop of :mod:`.common`).

The maths is :func:`sampling.get_ode_encoder`, the ODE sampler as its decoder and
:mod:`sampling.interpolation`. Both ODEs use ``config.sampling``'s rtol, atol and solver and the
SDE's sampling ε (``sde_lib.get_sde``); decoding adds no denoising step, so decode(encode(x)) = x
up to the solver's tolerance. Each image is its own solve, encoding and decoding alike, so a
latent (and a decoding) depends on its image alone: the same on 1 and 8 devices, whatever the
batch. Work goes in batches of at most ``config.eval.batch_size`` images.

``images``: comma-separated files or folders, read by :func:`common.load_image_list` (PNG /
JPEG, ``.npz`` / ``.npy`` of (N, H, W[, C]) or flat points; a folder contributes its ``.png``,
``.jpg``, ``.jpeg``, ``.npz``, ``.npy`` files in name order). Images must have the model's size
and channel count (else a ValueError naming the file's shape and the model's).

encode       ``latents.npz``: ``latents`` (N, *D) float32, the latents z = x(T) in model space;
             ``nfe`` (N,), each image's score evaluations; ``decode_nfe`` (N,), those of its
             decoding; ``roundtrip_rms`` (N,), the RMS over entries of decode(encode(x)) − x in
             data space ([0, 1] for images); ``names`` (N,), the file (and index in it) of each
             image; ``step``. Images also give ``roundtrip.png``: pairs (image, its decoding),
             up to 8 pairs a row.
interpolate  two images, ``num`` latents on the slerp (or linear) path z0 → z1, decoded:
             ``interpolation.png`` (a strip, z0 left) and ``interpolation.npz`` (``latents``
             (num, *D), ``alphas``, ``samples`` uint8 and ``samples_float`` in data space,
             ``nfe`` per decoded latent, ``roundtrip_rms`` of the two end points).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from score_sde_jax import datasets, files, sampling, sharding
from score_sde_jax.inference import common
from score_sde_jax.models import utils as mutils


def code(model: common.Model, kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``encode`` (x -> z) or ``decode`` (z -> x) of (N, *D) in model space over the mesh, one
    solve per image; returns (out (N, *D), nfe (N,))."""
    n = len(x)
    batch = common.batch_size(model.config, model.mesh, n)
    shape = (batch, *mutils.data_shape(model.config))
    ode = sampling.settings(model.config).ode_kwargs()
    if kind == "encode":
        encoder = sampling.get_ode_encoder(model.sde, shape, eps=model.eps, **ode)

        def fn(p, keys, rows):
            return encoder(model.build(p), rows)
    else:
        decoder = sampling.get_ode_sampler(model.sde, shape, eps=model.eps, per_sample=True, **ode)

        def fn(p, keys, rows):
            return decoder(keys[0], model.build(p), z=rows)

    outs = common.run_batches(common.keyed(fn, 1), model, common.index_batches(range(n), batch),
                              jax.random.PRNGKey(0), weights=(model.params,), arrays=(x,),
                              what=kind, unit="batch")
    out = np.concatenate([o for o, _ in outs])[:n]
    nfe = np.concatenate([np.broadcast_to(k, (batch,)) for _, k in outs])[:n].astype(np.int64)
    return out, nfe


def _rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((a - b).reshape(len(a), -1) ** 2, axis=1))


def encode(config, workdir: str | Path, images: str, out_dir: str | Path,
           step: int | None = None, mesh: Mesh | None = None) -> dict[str, Path | None]:
    """Encode the images of ``images``, decode the latents back and write ``latents.npz``
    (and ``roundtrip.png``); see the module doc. Returns ``{'npz': path, 'png': path or None}``."""
    x01, names = common.load_image_list(images, config)
    model = common.load_model(config, workdir, step, mesh)
    z, nfe = code(model, "encode", datasets.get_data_scaler(config)(x01))
    decoded, decode_nfe = code(model, "decode", z)
    decoded = np.asarray(datasets.get_data_inverse_scaler(config)(decoded), np.float32)
    rms = _rms(decoded, x01)
    out_dir = Path(out_dir)
    paths = {"npz": out_dir / "latents.npz", "png": None}
    if sharding.is_main_process():
        files.savez_atomic(paths["npz"], latents=z.astype(np.float32), nfe=nfe,
                           decode_nfe=decode_nfe, roundtrip_rms=rms, names=np.asarray(names),
                           step=np.int64(model.step))
        if not mutils.is_flat(config):
            pairs = np.stack([x01, np.clip(decoded, 0.0, 1.0)], axis=1).reshape(-1, *x01.shape[1:])
            paths["png"] = files.save_image_grid(pairs, out_dir / "roundtrip.png",
                                                 nrow=2 * min(8, len(x01)))
    logging.info("encoded %d image(s) with the checkpoint of step %d: %.0f NFE per image (max %d); "
                 "round-trip RMS error %.3g (max %.3g, in data space)", len(x01), model.step,
                 nfe.mean(), nfe.max(), rms.mean(), rms.max())
    return paths


def interpolate(config, workdir: str | Path, images: str, num: int, out_dir: str | Path,
                step: int | None = None, method: str = "slerp",
                mesh: Mesh | None = None) -> dict[str, Path | None]:
    """Decode ``num`` latents on the ``method`` path ('slerp' or 'linear') between the latents
    of the two images of ``images``; writes ``interpolation.{png,npz}`` (see the module doc).
    Returns ``{'npz': path, 'png': path or None}``."""
    if method not in sampling.INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {method!r}; valid: {sorted(sampling.INTERPOLATIONS)}")
    if int(num) < 2:
        raise ValueError(f"an interpolation needs num >= 2 images (the two end points), got {num}")
    x01, names = common.load_image_list(images, config)
    if len(x01) != 2:
        raise ValueError(f"interpolation needs exactly two images; {images!r} holds {len(x01)}")
    model = common.load_model(config, workdir, step, mesh)
    z, _ = code(model, "encode", datasets.get_data_scaler(config)(x01))
    alphas = np.linspace(0.0, 1.0, int(num))
    path = np.asarray(sampling.INTERPOLATIONS[method](z[0], z[1], alphas), np.float32)
    decoded, nfe = code(model, "decode", path)
    x = np.asarray(datasets.get_data_inverse_scaler(config)(decoded), np.float32)
    rms = _rms(x[[0, -1]], x01)
    logging.info("%s path of %d latents between %s and %s decoded (%d NFE at most); end points' "
                 "round-trip RMS error %.3g, %.3g", method, int(num), names[0], names[1],
                 nfe.max(), rms[0], rms[1])
    stem = Path(out_dir) / "interpolation"
    if not sharding.is_main_process():
        return {"npz": stem.with_suffix(".npz"), "png": stem.with_suffix(".png")}
    return files.write_samples(stem, x, f"{method} path", nrow=int(num),  # one strip, z0 left
                               latents=path, alphas=alphas, nfe=nfe, roundtrip_rms=rms,
                               names=np.asarray(names))
