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
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

from score_sde_jax import eval_lib, logging_utils, prng, sampling
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
    (batches,) -- and a ``.png``: an image grid, or a scatter plot of 2-D points (process 0).
    Returns ``{'npz': path, 'png': path}``.

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
    outs = common.run_batches(draw, model, batches,
                              eval_lib.sample_key(config, model.step), weights=(model.params,),
                              what=f"sampler ({method})")
    got = {}
    for idx, (x, _) in zip(batches, outs, strict=True):
        got.update(zip(idx.tolist(), x, strict=True))
    nfe = [int(np.max(n)) for _, n in outs]
    logging.info("%d samples with sampling.method=%s on %d device(s): %s NFE per batch",
                 len(seeds), method, model.mesh.devices.size, nfe)
    if class_label is not None:
        tag = f"_class_{int(class_label)}{tag}"
    stem = Path(out_dir) / f"samples_{method}_step_{model.step}{tag}"
    return common.write(config, np.stack([got[s] for s in seeds]), stem,
                        logging_utils.sample_title(config, model.step), seeds=np.asarray(seeds),
                        nfe=np.asarray(nfe))
