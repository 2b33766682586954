"""``main.py --mode sample``: samples of a trained checkpoint, reproducible by seed.

Sample i of the checkpoint of step s is drawn from the key ``fold_in(eval_lib.sample_key(config,
s), i)`` -- its prior draw and every noise draw -- the key of the evaluation's sample i: so
``--num_samples 64``, ``--seeds 0-63`` and ``--mode eval`` give the same samples, on 1 device, 8
devices or 2 hosts (to float summation order). For the batch-coupled samplers
(:func:`sampling.batch_coupled`: the Langevin corrector's batch-mean step size, the adaptive ODE
solvers' one step size) a sample depends on its batch of ``config.eval.batch_size``; ``seeds``
then recomputes the whole rounds that hold them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

from score_sde_jax import cli, datasets, eval_lib, files, logging_utils, prng, sampling, sharding
from score_sde_jax.inference import common
from score_sde_jax.models import utils as mutils


def parse_seeds(text: str) -> list[int]:
    """'0-63' -> [0, ..., 63]; '5,17' -> [5, 17]; '0-3,9' -> [0, 1, 2, 3, 9] (sample numbers)."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"--seeds={text!r}: expected numbers and ranges like 0-63 or 5,17")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not seeds:
        raise ValueError(f"--seeds={text!r} names no sample")
    return seeds


def sample(config, workdir: str | Path, num_samples: int | None, out_dir: str | Path,
           step: int | None = None, seeds: list[int] | None = None,
           mesh: Mesh | None = None, class_label: int | None = None) -> dict[str, Path]:
    """Samples ``seeds`` (default 0 .. num_samples − 1) of the EMA parameters of the checkpoint
    at ``step`` (latest when None) with the sampler of ``config.sampling``, over ``mesh``
    (default: every device of every process).

    Writes ``{out_dir}/samples_{method}_step_{step}[_seeds_{spec}].npz`` -- images: ``samples``
    uint8 (N, H, W, C) and ``samples_float`` float32 (N, H, W, C) in data space ([0, 1] up to
    sampling error, unclipped); flat data: ``samples`` float32 (N, D); ``seeds`` (N,) and ``nfe``
    (batches,) -- and a ``.png``: a grid of the first 1024 images, or a scatter plot of the first
    10,000 2-D points (process 0). Returns ``{'npz': path, 'png': path}``.

    Memory is bounded by the batch, not by the number of samples: each finished batch goes to
    a part file in ``{out_dir}/{stem}.parts-*``, merged into the ``.npz`` chunk by chunk at the
    end and removed. A request whose files would not fit the free space of ``out_dir``'s disk
    is refused (:class:`cli.NotEnoughSpaceError`) before the checkpoint is read.

    A label-conditional network (``config.model.num_classes`` = K > 0) samples with
    classifier-free guidance (``config.sampling.cfg_scale``, ``guidance_interval``): class
    ``class_label`` for all (files ``..._class_{K}``), else sample i of class i mod K (as in
    ``--mode eval``). ``class_label`` for an unconditional network is an error.
    """
    if seeds is None:
        if num_samples is None or int(num_samples) < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        seeds, tag = list(range(int(num_samples))), ""
    else:
        tag = "_seeds_" + "_".join(str(s) for s in seeds[:4]) + ("_etc" if len(seeds) > 4 else "")
    method = sampling.settings(config).method  # a bad method fails before the checkpoint is read
    eval_lib.sample_labels(config, np.zeros(1, np.int32), class_label)  # so does a bad label
    cli.check_free_space(out_dir, _bytes_needed(len(seeds), mutils.data_shape(config)),
                         f"{len(seeds)} samples", "; draw fewer (--num_samples) or write them "
                         "elsewhere (--sample_dir)")
    model = common.load_model(config, workdir, step, mesh)
    coupled = sampling.batch_coupled(config)
    batch = common.batch_size(config, model.mesh, None if coupled else len(seeds))
    if coupled:  # the whole rounds r·B .. r·B + B − 1 that hold the seeds
        batches = [np.arange(r * batch, (r + 1) * batch) for r in sorted({s // batch for s in seeds})]
    else:
        batches = common.index_batches(seeds, batch)
    sampler = sampling.get_sampling_fn(config, model.sde, (batch, *mutils.data_shape(config)), model.eps)

    def draw(params, rng, indices):
        labels = eval_lib.sample_labels(config, indices, class_label)
        return sampler(prng.example_keys(rng, indices), model.build(params, labels))

    logging.info("drawing %d samples in %d batch(es) of %d with sampling.method=%s (checkpoint "
                 "step %d) ...", len(seeds), len(batches), batch, method, model.step)
    outs = common.iter_batches(draw, model, batches, eval_lib.sample_key(config, model.step),
                               weights=(model.params,), what=f"sampler ({method})")
    if class_label is not None:
        tag = f"_class_{int(class_label)}{tag}"
    stem = Path(out_dir) / f"samples_{method}_step_{model.step}{tag}"
    nfe, paths = _write_batches(config, outs, batches, seeds, stem,
                                logging_utils.sample_title(config, model.step))
    logging.info("%d samples with sampling.method=%s on %d device(s): %s NFE per batch",
                 len(seeds), method, model.mesh.devices.size, nfe)
    return paths


def _bytes_needed(n: int, shape: tuple[int, ...]) -> int:
    """Disk space of n samples: the part files (float32) and the merged .npz (float32, and
    uint8 for images) exist together while merging; plus 1 MiB of zip headers and the PNG."""
    floats = 4 * n * int(np.prod(shape))
    return 2 * floats + (floats // 4 if len(shape) == 3 else 0) + 16 * n + (1 << 20)


def _write_batches(config, outs, batches: list[np.ndarray], seeds: list[int], stem: Path,
                   title: str) -> tuple[list[int], dict[str, Path | None]]:
    """Each finished batch's samples (data space) to a part file in a fresh folder
    ``{stem}.parts-*`` next to the output, merged into ``{stem}.npz`` / ``.png`` at the end
    (:func:`files.write_samples_stream`) and removed: memory holds one batch, not all samples.
    Returns (NFE per batch, paths). Process 0 writes; every process runs the batches."""
    main, inverse = sharding.is_main_process(), datasets.get_data_inverse_scaler(config)
    if main:
        stem.parent.mkdir(parents=True, exist_ok=True)
        parts = Path(tempfile.mkdtemp(prefix=f"{stem.name}.parts-", dir=stem.parent))
    wanted, where, nfe = set(seeds), {}, []
    try:
        for b, (idx, (x, n)) in enumerate(zip(batches, outs, strict=True)):
            nfe.append(int(np.max(n)))
            rows = []  # the first row of each wanted seed (a padded batch repeats its last)
            for r, s in enumerate(idx.tolist()):
                if s in wanted and s not in where:
                    where[s] = (b, len(rows))
                    rows.append(r)
            if main:
                x = np.asarray(inverse(np.asarray(x[rows], np.float32)), np.float32)
                files.savez_atomic(parts / f"{b:06d}.npz", x=x)
        if not main:
            return nfe, {"npz": stem.with_suffix(".npz"), "png": stem.with_suffix(".png")}
        size = max(len(i) for i in batches)

        def chunks():
            for start in range(0, len(seeds), size):
                spots = np.array([where[s] for s in seeds[start:start + size]])
                out = None
                for b in np.unique(spots[:, 0]):
                    x = files.read_npz(parts / f"{b:06d}.npz")["x"]
                    out = np.empty((len(spots), *x.shape[1:]), np.float32) if out is None else out
                    out[spots[:, 0] == b] = x[spots[spots[:, 0] == b, 1]]
                yield out

        paths = files.write_samples_stream(stem, chunks, len(seeds), title,
                                           seeds=np.asarray(seeds), nfe=np.asarray(nfe))
        logging.info("wrote %s", ", ".join(str(p) for p in paths.values() if p))
        return nfe, paths
    finally:
        if main:
            shutil.rmtree(parts, ignore_errors=True)  # this run's own part files
