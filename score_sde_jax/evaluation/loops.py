"""Evaluation (``main.py --mode eval``) and sampling (``--mode sample``) of trained checkpoints.

``evaluate(config, workdir)`` walks the snapshot checkpoints ``config.eval.begin_ckpt`` ..
``end_ckpt`` (inclusive). As in the official code these are snapshot *indices*: checkpoint k is
the snapshot saved at training step ``k * config.training.snapshot_freq`` in
``workdir/checkpoints``. Checkpoints of the range that do not exist (yet) are skipped with a
warning; none at all is an error. Each checkpoint is evaluated with its EMA parameters:

* ``eval.enable_loss``: the training objective over the test split -> ``ckpt_{k}_loss.npz``.
* ``eval.enable_bpd``: bits/dim of ``eval.bpd_dataset`` ('test' or 'train') through the ODE
  likelihood, over ``eval.bpd_num_repeats`` passes with fresh uniform dequantization noise ->
  ``{bpd_dataset}_ckpt_{k}_bpd.npz`` (see :func:`bpd_offset` for the maths).
* ``eval.enable_sampling``: ``eval.num_samples`` samples in rounds of ``eval.batch_size``; every
  round is written to ``ckpt_{k}_host_{h}/samples_{r}.npz`` (uint8) and its Inception pool
  features and logits to ``statistics_{r}.npz``; a restarted evaluation skips rounds already on
  disk. Then FID and KID against the dataset's reference statistics and the Inception score ->
  ``report_{k}.npz``. The reference statistics (of the whole training split) are computed once
  and cached at ``eval.ref_stats_path``, or ``{eval_dir}/{dataset}_{size}_ref_stats.npz`` when
  that is empty. For flat (toy) data there is no Inception network: the report holds the sliced
  Wasserstein distance to the test data and, for the Gaussian mixture, the mean true
  log-density of the samples.

Every finished result is also appended as one line to ``{eval_dir}/results.jsonl``; a result
already on disk is read back, not recomputed nor appended again. Optional config keys (defaults):
``eval.ref_stats_path`` (''), ``eval.hutchinson_type`` ('rademacher'), ``eval.likelihood_rtol``
and ``likelihood_atol`` (1e-5), ``eval.likelihood_eps`` (1e-5).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from score_sde_jax import analytic, checkpoints, datasets, evaluation, logging_utils, sde_lib, train_lib
from score_sde_jax.data import toy
from score_sde_jax.evaluation import files as io
from score_sde_jax.evaluation import inception as inception_lib
from score_sde_jax.evaluation.steps import (
    bpd_offset,
    get_bpd_fn,
    get_eval_loss_fn,
    get_sample_fn,
    is_flat,
    score_fn_builder,
)

__all__ = ["evaluate", "sample", "bpd_offset", "get_bpd_fn", "get_sample_fn", "score_fn_builder",
           "get_eval_loss_fn", "load_ema_params", "checkpoint_steps", "reference_statistics"]

# Sub-streams of the per-checkpoint evaluation key (jax.random.fold_in).
LOSS_STREAM, BPD_STREAM, SAMPLE_STREAM = 0, 1, 2
RESULTS_FILE = "results.jsonl"


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


# ----------------------------------------------------------------------------- multi-host helpers
def _host() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _host_dir(eval_dir: Path, k: int, host: int) -> Path:
    return eval_dir / f"ckpt_{k}_host_{host}"


def _record(eval_dir: Path, path: Path, head: dict, metrics: dict, **arrays) -> dict:
    """Save a finished result (process 0 only), append ``head | metrics`` to the JSON-lines
    file, and return ``metrics``."""
    if jax.process_index() == 0:
        io.savez_atomic(path, **arrays)
        io.append_jsonl(eval_dir / RESULTS_FILE, head | metrics)
    return metrics


# ----------------------------------------------------------------------------- loss and bits/dim
def _padded(batch: np.ndarray, size: int) -> np.ndarray:
    """Pad a short last batch to ``size`` by repeating its last example (one compiled shape)."""
    if len(batch) == size:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])


def _eval_loss(config, loss_fn, params, rng, eval_dir: Path, k: int, step: int) -> dict:
    path = eval_dir / f"ckpt_{k}_loss.npz"
    if path.is_file():
        return {"loss": float(io.load_npz(path)["mean_loss"])}
    scaler = datasets.get_data_scaler(config)
    host, _ = _host()
    part = _host_dir(eval_dir, k, host) / "loss.npz"
    if not part.is_file():
        ds = datasets.get_dataset(config, "test", evaluation=True, drop_remainder=False)
        losses, sizes = [], []
        for i, batch in enumerate(ds):
            batch = {"image": jnp.asarray(scaler(batch["image"])),
                     "label": jnp.asarray(batch["label"])}
            losses.append(float(loss_fn(params, jax.random.fold_in(rng, i), batch)))
            sizes.append(len(batch["image"]))
        io.savez_atomic(part, losses=np.asarray(losses), sizes=np.asarray(sizes))
    _barrier(f"loss_{k}")
    parts = [io.load_npz(_host_dir(eval_dir, k, h) / "loss.npz") for h in range(_host()[1])]
    all_losses = np.concatenate([p["losses"] for p in parts])
    sizes = np.concatenate([p["sizes"] for p in parts])
    mean = float(np.sum(all_losses * sizes) / np.sum(sizes))
    return _record(eval_dir, path, {"ckpt": k, "step": step, "kind": "loss"}, {"loss": mean},
                   all_losses=all_losses, mean_loss=mean)


def _bpd_pass(config, bpd_fn, params, rng, folder: Path, split: str,
              repeat: int) -> list[np.ndarray]:
    """One dequantized pass over ``split``; batches already on disk are read back."""
    ds = datasets.get_dataset(config, split, evaluation=True, uniform_dequantization=True,
                              drop_remainder=False, seed=int(config.seed) + 1 + repeat)
    out, local_batch = [], config.eval.batch_size // jax.process_count()
    for b, batch in enumerate(ds):
        path = folder / f"{split}_bpd_repeat_{repeat}_batch_{b}.npz"
        if not path.is_file():
            images = batch["image"]
            key = jax.random.fold_in(jax.random.fold_in(rng, repeat), b)
            bpd, nfe = bpd_fn(params, key, jnp.asarray(_padded(images, local_batch)))
            n = len(images)
            io.savez_atomic(path, bpd=np.asarray(bpd)[:n], nfe=np.asarray(nfe)[:n])
            logging.info("bits/dim: repeat %d, batch %d: %.4f", repeat, b, float(np.mean(bpd[:n])))
        out.append(io.load_npz(path)["bpd"])
    return out


def _eval_bpd(config, bpd_fn, params, rng, eval_dir: Path, k: int, step: int) -> dict:
    split = str(config.eval.bpd_dataset).lower()
    path = eval_dir / f"{split}_ckpt_{k}_bpd.npz"
    if path.is_file():
        data = io.load_npz(path)
        return {"bpd": float(data["mean_bpd"]), "bpd_std": float(data["std_bpd"])}
    repeats = int(config.eval.get("bpd_num_repeats", config.eval.get("num_repeats", 1)))
    host, count = _host()
    folder = _host_dir(eval_dir, k, host)
    mine = [b for r in range(repeats) for b in _bpd_pass(config, bpd_fn, params, rng, folder,
                                                          split, r)]
    io.savez_atomic(folder / f"{split}_bpd_all.npz", bpd=np.concatenate(mine))
    _barrier(f"bpd_{k}")
    if host != 0:
        return {}
    bpds = np.concatenate([io.load_npz(_host_dir(eval_dir, k, h) / f"{split}_bpd_all.npz")["bpd"]
                           for h in range(count)])
    mean, std = float(bpds.mean()), float(bpds.std() / math.sqrt(len(bpds)))
    head = {"ckpt": k, "step": step, "kind": "bpd", "split": split, "num_values": len(bpds),
            "num_repeats": repeats}
    return _record(eval_dir, path, head, {"bpd": mean, "bpd_std": std},
                   bpd=bpds, mean_bpd=mean, std_bpd=std)


# ----------------------------------------------------------------------------- samples, FID/IS/KID
def reference_statistics(config, inception: dict, path: str | Path) -> dict[str, np.ndarray]:
    """Inception statistics of the whole training split, cached at ``path`` (computed once)."""
    path = Path(path)
    if path.is_file():
        return evaluation.load_statistics(path)
    if jax.process_index() == 0:
        logging.info("computing reference Inception statistics of the training data -> %s", path)
        ds = datasets.get_dataset(config, "train", evaluation=True, shard=(0, 1),
                                  uniform_dequantization=False, drop_remainder=False)
        parts = [evaluation.compute_statistics(b["image"], inception, config.eval.batch_size)
                 for b in ds]
        io.savez_atomic(path, **{key: np.concatenate([p[key] for p in parts])
                                 for key in parts[0]})
    _barrier("reference_statistics")
    return evaluation.load_statistics(path)


def _sampling_round(config, sample_fn, params, key, folder: Path, r: int, inception) -> None:
    """Round ``r``: samples (if not on disk) and their Inception statistics (images only)."""
    samples_path, stats_path = folder / f"samples_{r}.npz", folder / f"statistics_{r}.npz"
    if not samples_path.is_file():
        x, nfe = sample_fn(params, key)
        x = datasets.get_data_inverse_scaler(config)(np.asarray(x))
        samples = np.asarray(x, np.float32) if is_flat(config) else io.to_uint8(x)
        io.savez_atomic(samples_path, samples=samples, nfe=np.asarray(nfe))
        logging.info("sampling round %d done (%s NFE)", r, np.asarray(nfe))
    if inception is not None and not stats_path.is_file():
        samples = io.load_npz(samples_path)["samples"]
        io.savez_atomic(stats_path, **evaluation.compute_statistics(
            samples, inception, config.eval.batch_size))


def _toy_report(config, samples: np.ndarray) -> dict[str, float]:
    data = next(iter(datasets.get_dataset(config, "test", evaluation=True, shard=(0, 1))))["image"]
    n = min(len(samples), len(data))
    sw = analytic.sliced_wasserstein(jax.random.PRNGKey(0), jnp.asarray(samples[:n]),
                                     jnp.asarray(data[:n]))
    report = {"sliced_wasserstein": float(sw)}
    if toy.toy_name(config.data) == "gmm":
        mixture = toy.gaussian_mixture_from_config(config.data)
        report["gmm_log_prob"] = float(jnp.mean(mixture.log_prob(jnp.asarray(samples))))
    return report


def _eval_samples(config, sample_fn, params, rng, eval_dir: Path, k: int, step: int,
                  inception, ref_stats) -> dict:
    path = eval_dir / f"report_{k}.npz"
    names = ("sliced_wasserstein", "gmm_log_prob", "inception_score", "fid", "kid")
    if path.is_file():
        data = io.load_npz(path)
        return {n: float(data[n]) for n in names if n in data}
    host, count = _host()
    per_host = config.eval.batch_size // count
    num_rounds = math.ceil(config.eval.num_samples / (per_host * count))
    folder = _host_dir(eval_dir, k, host)
    host_rng = jax.random.fold_in(rng, host)
    for r in range(num_rounds):
        _sampling_round(config, sample_fn, params, jax.random.fold_in(host_rng, r), folder, r,
                        inception)
    _barrier(f"samples_{k}")
    if host != 0:
        return {}
    kind = "samples" if inception is None else "statistics"
    files = [_host_dir(eval_dir, k, h) / f"{kind}_{r}.npz" for r in range(num_rounds)
             for h in range(count)]
    loaded = [io.load_npz(f) for f in files]
    n = config.eval.num_samples
    if inception is None:
        report = _toy_report(config, np.concatenate([d["samples"] for d in loaded])[:n])
    else:
        stats = {key: np.concatenate([d[key] for d in loaded])[:n] for key in ("pool", "logits")}
        report = evaluation.metrics_from_statistics(stats, ref_stats)
    logging.info("checkpoint %d: %s", k, report)
    head = {"ckpt": k, "step": step, "kind": "samples", "num_samples": n}
    return _record(eval_dir, path, head, report, **report)


# ----------------------------------------------------------------------------- entry points
def evaluate(config, workdir: str | Path, eval_folder: str = "eval") -> dict[int, dict]:
    """Evaluate the checkpoints of ``config.eval`` (see the module docstring for what is
    computed and where it is written). Returns ``{checkpoint index: {metric: value}}``
    (on process 0; the other processes get their partial results)."""
    eval_dir = Path(workdir) / eval_folder
    eval_dir.mkdir(parents=True, exist_ok=True)
    ev = config.eval
    if ev.enable_bpd and str(ev.bpd_dataset).lower() not in ("train", "test"):
        raise ValueError(f"config.eval.bpd_dataset={ev.bpd_dataset!r} must be 'train' or 'test'")
    if ev.enable_sampling and ev.batch_size % jax.process_count():
        raise ValueError(f"config.eval.batch_size={ev.batch_size} must be a multiple of the "
                         f"number of processes ({jax.process_count()})")
    steps = checkpoint_steps(config, workdir)  # fails before any work when there are none
    sde, sampling_eps = sde_lib.get_sde(config)
    build = score_fn_builder(config, sde)
    announce = logging_utils.announce_compile
    loss_fn = announce(get_eval_loss_fn(config, sde), "eval loss") if ev.enable_loss else None
    bpd_fn = announce(get_bpd_fn(config, sde, build), "bits/dim (ODE likelihood)") \
        if ev.enable_bpd else None
    sample_fn = inception = ref_stats = None
    if ev.enable_sampling:
        sample_fn = announce(get_sample_fn(config, sde, build, ev.batch_size // jax.process_count(),
                                           sampling_eps), f"sampler ({config.sampling.method})")
        if not is_flat(config):  # a missing weight file fails here, before any work
            inception = inception_lib.load_inception_from_config(config)
            size = config.data.image_size
            ref_path = ev.get("ref_stats_path", "") or (
                eval_dir / f"{str(config.data.dataset).lower()}_{size}_ref_stats.npz")
            ref_stats = reference_statistics(config, inception, ref_path)

    results = {}
    for k, step in steps:
        params, _ = load_ema_params(config, workdir, step)
        rng = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 1), step)
        result = {"step": step}
        if loss_fn is not None:
            result |= _eval_loss(config, loss_fn, params, jax.random.fold_in(rng, LOSS_STREAM),
                                 eval_dir, k, step)
        if bpd_fn is not None:
            result |= _eval_bpd(config, bpd_fn, params, jax.random.fold_in(rng, BPD_STREAM),
                                eval_dir, k, step)
        if sample_fn is not None:
            result |= _eval_samples(config, sample_fn, params,
                                    jax.random.fold_in(rng, SAMPLE_STREAM), eval_dir, k, step,
                                    inception, ref_stats)
        logging.info("checkpoint %d (step %d): %s", k, step, result)
        results[k] = result
    return results


def sample(config, workdir: str | Path, num_samples: int, out_dir: str | Path,
           step: int | None = None) -> dict[str, Path]:
    """``num_samples`` samples from the EMA parameters of the checkpoint at ``step`` (latest
    when None) with the sampler of ``config.sampling``, in batches of at most
    ``config.eval.batch_size``.

    Writes ``{out_dir}/samples_{method}_step_{step}.npz`` -- images: ``samples`` uint8
    (N, H, W, C) and ``samples_float`` float32 (N, H, W, C) in data space ([0, 1] up to sampling
    error, unclipped); flat data: ``samples`` float32 (N, D); and ``nfe`` (batches,), the network
    evaluations of each batch -- and a ``.png``: an image grid, or a scatter plot of 2-D points.
    Returns ``{'npz': path, 'png': path}``.
    """
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    params, step = load_ema_params(config, workdir, step)
    sde, sampling_eps = sde_lib.get_sde(config)
    batch = min(int(num_samples), int(config.eval.batch_size))
    sample_fn = logging_utils.announce_compile(
        get_sample_fn(config, sde, score_fn_builder(config, sde), batch, sampling_eps),
        f"sampler ({config.sampling.method}, batches of {batch})")
    rng = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 2), step)
    parts, nfe = [], []
    rounds = math.ceil(num_samples / batch)
    logging.info("drawing %d samples in %d batch(es) of %d with sampling.method=%s (checkpoint "
                 "step %d) ...", num_samples, rounds, batch, config.sampling.method, step)
    progress = logging_utils.Progress(0, rounds, desc="sample", unit="batch")
    for r in range(rounds):
        x, n = sample_fn(params, jax.random.fold_in(rng, r))
        parts.append(np.asarray(x))
        nfe.append(int(np.max(np.asarray(n))))
        progress.update(r + 1)
    progress.close()
    logging.info("%d samples with sampling.method=%s: %s NFE per batch", num_samples,
                 config.sampling.method, nfe)
    x = np.asarray(datasets.get_data_inverse_scaler(config)(np.concatenate(parts)[:num_samples]),
                   np.float32)
    stem = Path(out_dir) / f"samples_{str(config.sampling.method).lower()}_step_{step}"
    png = stem.with_suffix(".png")
    if is_flat(config):
        npz = io.savez_atomic(stem.with_suffix(".npz"), samples=x, nfe=np.asarray(nfe))
        if x.shape[1] == 2:
            io.save_scatter(x, png, logging_utils.sample_title(config, step))
        else:
            png = None
    else:
        npz = io.savez_atomic(stem.with_suffix(".npz"), samples=io.to_uint8(x), samples_float=x,
                              nfe=np.asarray(nfe))
        io.save_image_grid(x, png)
    return {"npz": npz, "png": png}
