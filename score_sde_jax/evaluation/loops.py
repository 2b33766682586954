"""Evaluation (``main.py --mode eval``) and sampling (``--mode sample``) of trained checkpoints,
on every device of every process.

``evaluate(config, workdir)`` walks the snapshot checkpoints ``config.eval.begin_ckpt`` ..
``end_ckpt`` (inclusive). As in the official code these are snapshot *indices*: checkpoint k is
the snapshot saved at training step ``k * config.training.snapshot_freq`` in
``workdir/checkpoints``. Checkpoints of the range that do not exist (yet) are skipped with a
warning; none at all is an error. Each checkpoint is evaluated with its EMA parameters:

* ``eval.enable_loss``: the training objective of every test example -> ``ckpt_{k}_loss.npz``.
* ``eval.enable_bpd``: bits/dim of ``eval.bpd_dataset`` ('test' or 'train') through the ODE
  likelihood, over ``eval.bpd_num_repeats`` passes with fresh uniform dequantization noise ->
  ``{bpd_dataset}_ckpt_{k}_bpd.npz`` (see :func:`bpd_offset` for the maths); each batch is
  saved as ``ckpt_{k}/{split}_bpd_repeat_{r}_batch_{b}.npz``.
* ``eval.enable_sampling``: ``eval.num_samples`` samples in rounds of ``eval.batch_size``.
  Each process writes the samples on its devices to ``ckpt_{k}_host_{h}/samples_{r}.npz``
  (``indices``: the samples' global numbers, ``samples``: uint8 images quantized as
  ``eval.quantize`` says, or float points); process 0 writes the round's Inception pool
  features and logits to ``ckpt_{k}/round_{r}.npz``. A restarted evaluation skips the rounds on
  disk. Then FID and KID against the dataset's reference statistics and the Inception score ->
  ``report_{k}.npz``, which also records the number of samples, the reference-statistics file
  and its sample count, the Inception weight file's SHA-256 and the quantization (fewer than
  50 000 samples log a warning: not the paper's FID). The reference statistics (of the whole
  training split) are computed once and cached at ``eval.ref_stats_path``, or
  ``{eval_dir}/{dataset}_{size}_ref_stats.npz`` when that is empty. For flat (toy) data there
  is no Inception network: the report holds the sliced Wasserstein distance to the test data
  and, for the Gaussian mixture, the mean true log-density of the samples.

How the work is spread: every step runs under ``jax.jit`` over the training mesh
(``train_lib.make_mesh()``, every device of every process): the global batch
``eval.batch_size`` (a multiple of the device count) is sharded, the parameters replicated.
Reproducible by seed: sample i of checkpoint step s is drawn from the key
``fold_in(fold_in(fold_in(PRNGKey(config.seed), s), SAMPLE_STREAM), i)`` -- its prior draw and
every noise draw -- so 1 device, 8 devices or 2 processes give the same samples, the same
FID / IS / KID and bits/dim (to float summation order), and ``sample(..., seeds=[5, 17])``
regenerates samples 5 and 17. The Langevin corrector's step size is a mean over the global
batch (official) and the adaptive ODE solvers take one step size for the batch: their samples
depend on ``eval.batch_size`` (never on the device count), and ``seeds`` then recomputes the
whole rounds that hold the requested samples.

Every finished result is also appended as one line to ``{eval_dir}/results.jsonl`` and, at the
end, one table of every checkpoint's metrics is printed; a result already on disk is read back,
not recomputed nor appended again. Optional config keys (defaults): ``eval.ref_stats_path``
(''), ``eval.quantize`` ('truncate'), ``eval.hutchinson_type`` ('rademacher'),
``eval.likelihood_rtol`` and ``likelihood_atol`` (1e-5), ``eval.likelihood_eps`` (1e-5).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from score_sde_jax import checkpoints, datasets, logging_utils, sde_lib, train_lib
from score_sde_jax.evaluation import files as io
from score_sde_jax.evaluation import inception as inception_lib
from score_sde_jax.evaluation import rounds, sharding
from score_sde_jax.evaluation.steps import (
    batch_coupled,
    bpd_offset,
    get_bpd_fn,
    get_eval_loss_fn,
    get_inception_fn,
    get_sample_fn,
    is_flat,
    quantize_fn,
    score_fn_builder,
)

__all__ = ["evaluate", "sample", "bpd_offset", "get_bpd_fn", "get_sample_fn", "score_fn_builder",
           "get_eval_loss_fn", "load_ema_params", "checkpoint_steps", "parse_seeds",
           "sample_key", "summary_table"]

# Sub-streams of the per-checkpoint key (jax.random.fold_in).
LOSS_STREAM, BPD_STREAM, SAMPLE_STREAM = 0, 1, 2
RESULTS_FILE = rounds.RESULTS_FILE


def sample_key(config, step: int, stream: int = SAMPLE_STREAM) -> jax.Array:
    """The key of a checkpoint's evaluation stream: fold_in(fold_in(PRNGKey(seed), step), stream)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), step),
                              stream)


# ----------------------------------------------------------------------------- checkpoints
def load_ema_params(config, workdir: str | Path, step: int | None = None) -> tuple[dict, int]:
    """EMA parameters and step of the snapshot (``workdir/checkpoints``) or preemption
    (``workdir/checkpoints-meta``) checkpoint at ``step``; the latest of either when None.

    The restore template is the *shape* of ``train_lib.create_train_state(config, ...)``
    (``jax.eval_shape``: no network initialization is compiled or run).
    """
    dirs = checkpoints.step_dirs(workdir)
    found: dict[int, Path] = {}
    for directory in dirs:
        for s in checkpoints.all_steps(directory):
            found.setdefault(int(s), directory)
    if not found:
        raise checkpoints.CheckpointNotFoundError(
            f"no checkpoint in {dirs[0]} or {dirs[1]} (--workdir={workdir})")
    step = max(found) if step is None else int(step)
    if step not in found:
        raise checkpoints.CheckpointNotFoundError(
            f"no checkpoint of step {step} in {workdir}; steps there: {sorted(found)}")
    template = jax.eval_shape(
        lambda: train_lib.create_train_state(config, jax.random.PRNGKey(int(config.seed))))
    state = checkpoints.restore(found[step], template, step=step, config=config)
    return state.params_ema, step


def checkpoint_steps(config, workdir: str | Path) -> list[tuple[int, int]]:
    """(index k, step k * snapshot_freq) of the snapshots in the eval range that exist."""
    directory = checkpoints.step_dirs(workdir)[0]
    have = set(checkpoints.all_steps(directory))
    freq = int(config.training.snapshot_freq)
    wanted = [(k, k * freq) for k in range(config.eval.begin_ckpt, config.eval.end_ckpt + 1)]
    present = [(k, s) for k, s in wanted if s in have]
    for k, s in wanted:
        if s not in have:
            logging.warning("checkpoint %d (step %d) is not in %s; skipped", k, s, directory)
    if not present:
        raise checkpoints.CheckpointNotFoundError(
            f"none of the checkpoints config.eval.begin_ckpt={config.eval.begin_ckpt} .. "
            f"end_ckpt={config.eval.end_ckpt} (steps k * training.snapshot_freq = k * {freq}) is "
            f"in {directory}; steps there: {sorted(have)}")
    return present


# ----------------------------------------------------------------------------- entry points
def _context(config, mesh: Mesh | None, eval_dir: Path) -> rounds.Context:
    mesh = mesh or train_lib.make_mesh()
    ctx = rounds.Context(config, mesh, eval_dir, sharding.check_batch(config.eval.batch_size, mesh))
    ev = config.eval
    sde, sampling_eps = sde_lib.get_sde(config)
    build, announce = score_fn_builder(config, sde), logging_utils.announce_compile
    if ev.enable_loss:
        ctx.loss_fn = announce(get_eval_loss_fn(config, sde, mesh), "eval loss")
    if ev.enable_bpd:
        ctx.bpd_fn = announce(get_bpd_fn(config, sde, build, mesh), "bits/dim (ODE likelihood)")
    if ev.enable_sampling:
        ctx.sample_fn = announce(get_sample_fn(config, sde, build, ctx.batch, sampling_eps, mesh),
                                 f"sampler ({config.sampling.method})")
        if not is_flat(config):  # a missing weight file fails here, before any work
            ctx.quantize_fn = sharding.jit_batch(quantize_fn(config), mesh, 0, 1)
            weights = config.eval.get("inception_path", "")
            ctx.inception = sharding.replicate(inception_lib.load_inception_from_config(config), mesh)
            ctx.inception_fn = get_inception_fn(ctx.inception, mesh)
            ref_path = Path(ev.get("ref_stats_path", "") or (
                eval_dir / f"{str(config.data.dataset).lower()}_{config.data.image_size}_ref_stats.npz"))
            ctx.ref_stats = rounds.reference_statistics(ctx, ref_path)
            ctx.protocol = {"ref_stats_path": str(ref_path),
                            "ref_num_samples": int(len(ctx.ref_stats["pool"])),
                            "inception_sha256": io.sha256(weights),
                            "quantize": str(ev.get("quantize", "truncate")).lower()}
    return ctx


def evaluate(config, workdir: str | Path, eval_folder: str = "eval",
             mesh: Mesh | None = None) -> dict[int, dict]:
    """Evaluate the checkpoints of ``config.eval`` over ``mesh`` (default: every device of every
    process; see the module docstring for what is computed and where it is written). Returns
    ``{checkpoint index: {metric: value}}`` (on process 0; the others get partial results) and
    prints their table (process 0)."""
    eval_dir = Path(workdir) / eval_folder
    eval_dir.mkdir(parents=True, exist_ok=True)
    ev = config.eval
    if ev.enable_bpd and str(ev.bpd_dataset).lower() not in ("train", "test"):
        raise ValueError(f"config.eval.bpd_dataset={ev.bpd_dataset!r} must be 'train' or 'test'")
    steps = checkpoint_steps(config, workdir)  # fails before any work when there are none
    ctx = _context(config, mesh, eval_dir)
    logging.info("evaluating %d checkpoint(s) on %d device(s), %d process(es), global batch %d",
                 len(steps), ctx.mesh.devices.size, jax.process_count(), ctx.batch)
    results = {}
    for k, step in steps:
        params, _ = load_ema_params(config, workdir, step)
        params = sharding.replicate(params, ctx.mesh)
        result = {"step": step}
        parts = ((ctx.loss_fn, LOSS_STREAM, rounds.eval_loss), (ctx.bpd_fn, BPD_STREAM, rounds.eval_bpd),
                 (ctx.sample_fn, SAMPLE_STREAM, rounds.eval_samples))
        for fn, stream, run in parts:
            if fn is not None:
                result |= run(ctx, params, sample_key(config, step, stream), k, step)
        logging.info("checkpoint %d (step %d): %s", k, step, result)
        results[k] = result
    if jax.process_index() == 0:
        print(summary_table(results), flush=True)
    return results


def summary_table(results: dict[int, dict]) -> str:
    """One row per checkpoint, one column per metric present in any of them."""
    order = ("loss", "bpd", "bpd_std", "fid", "inception_score", "kid", "sliced_wasserstein",
             "gmm_log_prob")
    names = [m for m in order if any(m in r for r in results.values())]
    rows = [["ckpt", "step", *names]]
    for k, r in sorted(results.items()):
        rows.append([str(k), str(r.get("step", "")),
                     *(f"{r[m]:.5g}" if m in r else "-" for m in names)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


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


def _index_batches(seeds: list[int], batch: int, coupled: bool) -> list[np.ndarray]:
    """Global sample numbers to run, in batches of ``batch``: the whole rounds r·B .. r·B + B − 1
    holding the seeds when samples are coupled over the batch, else the seeds themselves (the
    last batch padded)."""
    if coupled:
        return [np.arange(r * batch, (r + 1) * batch) for r in sorted({s // batch for s in seeds})]
    seeds = np.asarray(seeds)
    return [sharding.padded_indices(seeds[i:i + batch], batch) for i in range(0, len(seeds), batch)]


def sample(config, workdir: str | Path, num_samples: int | None, out_dir: str | Path,
           step: int | None = None, seeds: list[int] | None = None,
           mesh: Mesh | None = None) -> dict[str, Path]:
    """Samples ``seeds`` (default 0 .. num_samples − 1) of the EMA parameters of the checkpoint
    at ``step`` (latest when None) with the sampler of ``config.sampling``, over ``mesh``.

    Sample i is the evaluation's sample i (the same key, :func:`sample_key`), whatever the
    devices and the other seeds asked for (for batch-coupled samplers, see the module
    docstring, the rounds of ``config.eval.batch_size`` that hold the seeds are recomputed).
    Writes ``{out_dir}/samples_{method}_step_{step}[_seeds_{spec}].npz`` -- images: ``samples``
    uint8 (N, H, W, C) and ``samples_float`` float32 (N, H, W, C) in data space ([0, 1] up to
    sampling error, unclipped); flat data: ``samples`` float32 (N, D); ``seeds`` (N,) and ``nfe``
    (batches,) -- and a ``.png``: an image grid, or a scatter plot of 2-D points (process 0).
    Returns ``{'npz': path, 'png': path}``.
    """
    if seeds is None:
        if num_samples is None or int(num_samples) < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        seeds, tag = list(range(int(num_samples))), ""
    else:
        tag = "_seeds_" + "_".join(str(s) for s in seeds[:4]) + ("_etc" if len(seeds) > 4 else "")
    mesh = mesh or train_lib.make_mesh()
    batch = sharding.check_batch(config.eval.batch_size, mesh)
    coupled = batch_coupled(config)
    if not coupled:  # no more than the seeds need (rounded up to the device count)
        devices = mesh.devices.size
        batch = min(batch, -(-len(seeds) // devices) * devices)
    params, step = load_ema_params(config, workdir, step)
    params = sharding.replicate(params, mesh)
    sde, sampling_eps = sde_lib.get_sde(config)
    sample_fn = logging_utils.announce_compile(
        get_sample_fn(config, sde, score_fn_builder(config, sde), batch, sampling_eps, mesh),
        f"sampler ({config.sampling.method}, batches of {batch})")
    key = sample_key(config, step)
    got, nfe = {}, []
    batches = _index_batches(seeds, batch, coupled)
    logging.info("drawing %d samples in %d batch(es) of %d with sampling.method=%s (checkpoint "
                 "step %d) ...", len(seeds), len(batches), batch, config.sampling.method, step)
    progress = logging_utils.Progress(0, len(batches), desc="sample", unit="batch")
    for r, idx in enumerate(batches):
        x, n = sample_fn(params, key, sharding.global_array(idx, mesh))
        got.update(zip(idx.tolist(), sharding.gather(x), strict=True))
        nfe.append(int(np.max(np.asarray(n))))
        progress.update(r + 1)
    progress.close()
    logging.info("%d samples with sampling.method=%s on %d device(s): %s NFE per batch",
                 len(seeds), config.sampling.method, mesh.devices.size, nfe)
    x = np.asarray(datasets.get_data_inverse_scaler(config)(np.stack([got[s] for s in seeds])),
                   np.float32)
    stem = Path(out_dir) / f"samples_{str(config.sampling.method).lower()}_step_{step}{tag}"
    png = stem.with_suffix(".png")
    extra = {"seeds": np.asarray(seeds), "nfe": np.asarray(nfe)}
    if jax.process_index() != 0:
        return {"npz": stem.with_suffix(".npz"), "png": png}
    if is_flat(config):
        npz = io.savez_atomic(stem.with_suffix(".npz"), samples=x, **extra)
        if x.shape[1] == 2:
            io.save_scatter(x, png, logging_utils.sample_title(config, step))
        else:
            png = None
    else:
        npz = io.savez_atomic(stem.with_suffix(".npz"), samples=io.to_uint8(x), samples_float=x,
                              **extra)
        io.save_image_grid(x, png)
    return {"npz": npz, "png": png}
