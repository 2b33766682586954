"""Evaluation (``main.py --mode eval``) of trained checkpoints, on every device of every process.

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
(``sharding.make_mesh()``, every device of every process): the global batch
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
from jax.sharding import Mesh

from score_sde_jax import checkpoints, eval_lib, files, logging_utils, sde_lib, sharding
from score_sde_jax.eval_lib import BPD_STREAM, LOSS_STREAM, SAMPLE_STREAM, sample_key
from score_sde_jax.evaluation import inception as inception_lib
from score_sde_jax.evaluation import rounds, statistics
from score_sde_jax.models import utils as mutils

__all__ = ["evaluate", "checkpoint_steps", "summary_table"]

RESULTS_FILE = rounds.RESULTS_FILE


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
    mesh = mesh or sharding.make_mesh()
    ctx = rounds.Context(config, mesh, eval_dir, sharding.check_batch_size(config.eval.batch_size, mesh,
                                                    "config.eval.batch_size"))
    ev = config.eval
    sde, sampling_eps = sde_lib.get_sde(config)
    build, announce = eval_lib.score_fn_builder(config, sde), logging_utils.announce_compile
    if ev.enable_loss:
        ctx.loss_fn = announce(eval_lib.get_eval_loss_fn(config, sde, mesh), "eval loss")
    if ev.enable_bpd:
        ctx.bpd_fn = announce(eval_lib.get_bpd_fn(config, sde, build, mesh), "bits/dim (ODE likelihood)")
    if ev.enable_sampling:
        ctx.sample_fn = announce(eval_lib.get_sample_fn(config, sde, build, ctx.batch, sampling_eps, mesh),
                                 f"sampler ({config.sampling.method})")
        if not mutils.is_flat(config):  # a missing weight file fails here, before any work
            ctx.quantize_fn = sharding.jit_batch(statistics.quantize_fn(config), mesh, 0, 1)
            weights = config.eval.get("inception_path", "")
            ctx.inception = sharding.replicate(inception_lib.load_inception_from_config(config), mesh)
            ctx.inception_fn = statistics.get_inception_fn(ctx.inception, mesh)
            ref_path = Path(ev.get("ref_stats_path", "") or (
                eval_dir / f"{str(config.data.dataset).lower()}_{config.data.image_size}_ref_stats.npz"))
            ctx.ref_stats = rounds.reference_statistics(ctx, ref_path)
            ctx.protocol = {"ref_stats_path": str(ref_path),
                            "ref_num_samples": int(len(ctx.ref_stats["pool"])),
                            "inception_sha256": files.sha256(weights),
                            "quantize": str(ev.get("quantize", "truncate")).lower()}
    return ctx


def evaluate(config, workdir: str | Path, eval_folder: str = "eval",
             mesh: Mesh | None = None) -> dict[int, dict]:
    """Evaluate the checkpoints of ``config.eval`` over ``mesh`` (default: every device of every
    process; see the module docstring for what is computed and where it is written). Returns
    ``{checkpoint index: {metric: value}}`` (on process 0; the others get partial results) and
    prints their table (process 0)."""
    eval_dir = Path(workdir) / eval_folder
    ev = config.eval
    if ev.enable_bpd and str(ev.bpd_dataset).lower() not in ("train", "test"):
        raise ValueError(f"config.eval.bpd_dataset={ev.bpd_dataset!r} must be 'train' or 'test'")
    if ev.enable_sampling and not mutils.is_flat(config):  # FID / IS / KID need the weights
        inception_lib.weights_file(ev.get("inception_path", ""))
    steps = checkpoint_steps(config, workdir)  # fails before any work when there are none
    created = not eval_dir.exists()
    eval_dir.mkdir(parents=True, exist_ok=True)
    try:
        ctx = _context(config, mesh, eval_dir)
    except BaseException:  # a refused run (no data, bad weights, Ctrl-C) leaves no empty folder
        if created and jax.process_index() == 0 and not any(eval_dir.iterdir()):
            eval_dir.rmdir()
        raise
    logging.info("evaluating %d checkpoint(s) on %d device(s), %d process(es), global batch %d",
                 len(steps), ctx.mesh.devices.size, jax.process_count(), ctx.batch)
    results = {}
    for k, step in steps:
        params, _ = checkpoints.load_ema_params(config, workdir, step)
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
