"""The work of one checkpoint's evaluation over the device mesh: the loss over the test split,
bits/dim passes, sampling rounds with their Inception features, and the reference statistics.

Global batches are host-identical: every process reads the same evaluation batch (the whole
of it) and places its own rows on its devices (:mod:`score_sde_jax.sharding`). The
example at position i of the split (or sample i) draws from ``fold_in(key, i)``, so results do
not depend on the device or process count. Files (see :mod:`score_sde_jax.evaluation.loops`)
are written as soon as a batch or round is done; a restarted evaluation skips what is on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from score_sde_jax import analytic, datasets, logging_utils, sharding
from score_sde_jax import files as io
from score_sde_jax.data import toy
from score_sde_jax.evaluation import statistics
from score_sde_jax.models.utils import is_flat

PAPER_NUM_SAMPLES = 50_000
RESULTS_FILE = "results.jsonl"


@dataclasses.dataclass
class Context:
    """What the steps of an evaluation share: the config, the mesh, the output folder, the
    global batch, and the jitted steps (None when that part of the evaluation is off)."""

    config: object
    mesh: Mesh
    eval_dir: Path
    batch: int
    loss_fn: object = None
    bpd_fn: object = None
    sample_fn: object = None
    quantize_fn: object = None
    inception_fn: object = None
    inception: object = None  # replicated Inception variables
    ref_stats: dict | None = None
    protocol: dict = dataclasses.field(default_factory=dict)  # recorded in every sample report


def host_dir(eval_dir: Path, k: int, host: int) -> Path:
    return eval_dir / f"ckpt_{k}_host_{host}"


def record(ctx: Context, path: Path, head: dict, metrics: dict, **arrays) -> dict:
    """Save a finished result (process 0 only), append ``head | metrics`` to the JSON-lines
    file, and return ``metrics``."""
    if jax.process_index() == 0:
        io.savez_atomic(path, **arrays)
        io.append_jsonl(ctx.eval_dir / RESULTS_FILE, head | metrics)
    return metrics


def global_batches(config, split: str, batch: int):
    """(indices (batch,), n valid, {'image', 'label'} (batch, ...)) over one ordered pass of
    ``split`` in [0, 1] (not dequantized), the last batch padded by repeating its last row."""
    ds = datasets.get_dataset(config, split, evaluation=True, shard=(0, 1), drop_remainder=False,
                              uniform_dequantization=False)
    start = 0
    for data in ds:
        n = len(data["image"])
        rows = sharding.padded_indices(np.arange(n), batch)
        yield (sharding.padded_indices(np.arange(start, start + n), batch), n,
               {key: np.asarray(v)[rows] for key, v in data.items()})
        start += n


def num_batches(config, split: str) -> int:
    return len(datasets.get_dataset(config, split, evaluation=True, shard=(0, 1),
                                    drop_remainder=False, uniform_dequantization=False, prefetch=0))


# ----------------------------------------------------------------------------- loss and bits/dim
def eval_loss(ctx: Context, params, key, k: int, step: int) -> dict:
    """The training objective of every test example, averaged -> ``ckpt_{k}_loss.npz``."""
    path = ctx.eval_dir / f"ckpt_{k}_loss.npz"
    if path.is_file():
        return {"loss": float(io.read_npz(path)["mean_loss"])}
    scaler, put = datasets.get_data_scaler(ctx.config), lambda a: sharding.global_array(a, ctx.mesh)
    losses = []
    for idx, n, data in global_batches(ctx.config, "test", ctx.batch):
        out = ctx.loss_fn(params, key, put(idx), put(scaler(data["image"])), put(data["label"]))
        losses.append(sharding.gather(out)[:n])
    losses = np.concatenate(losses)
    mean = float(np.mean(losses))
    return record(ctx, path, {"ckpt": k, "step": step, "kind": "loss", "num_values": len(losses)},
                  {"loss": mean}, all_losses=losses, mean_loss=mean)


def eval_bpd(ctx: Context, params, key, k: int, step: int) -> dict:
    """Bits/dim of ``eval.bpd_dataset`` over ``eval.bpd_num_repeats`` dequantized passes ->
    ``{split}_ckpt_{k}_bpd.npz``; each batch is saved (process 0) as it is done."""
    config = ctx.config
    split = str(config.eval.bpd_dataset).lower()
    path = ctx.eval_dir / f"{split}_ckpt_{k}_bpd.npz"
    if path.is_file():
        data = io.read_npz(path)
        return {"bpd": float(data["mean_bpd"]), "bpd_std": float(data["std_bpd"])}
    repeats = int(config.eval.bpd_num_repeats)
    folder = ctx.eval_dir / f"ckpt_{k}"
    progress = logging_utils.Progress(0, repeats * num_batches(config, split), desc="bits/dim",
                                      unit="batch")
    put, values, done = (lambda a: sharding.global_array(a, ctx.mesh)), [], 0
    try:
        for repeat in range(repeats):
            for b, (idx, n, data) in enumerate(global_batches(config, split, ctx.batch)):
                part = folder / f"{split}_bpd_repeat_{repeat}_batch_{b}.npz"
                if sharding.any_process([jax.process_index() == 0 and not part.is_file()])[0]:
                    bpd, nfe = ctx.bpd_fn(params, jax.random.fold_in(key, repeat), put(idx),
                                          put(data["image"]))
                    bpd, nfe = sharding.gather(bpd)[:n], sharding.gather(nfe)[:n]
                    if jax.process_index() == 0:
                        io.savez_atomic(part, bpd=bpd, nfe=nfe, indices=idx[:n])
                    logging.info("bits/dim: repeat %d, batch %d: %.4f (mean NFE %.0f)", repeat, b,
                                 float(np.mean(bpd)), float(np.mean(nfe)))
                if jax.process_index() == 0:
                    values.append(io.read_npz(part)["bpd"])
                done += 1
                progress.update(done)
    finally:
        progress.close()
    if jax.process_index() != 0:
        return {}
    bpds = np.concatenate(values)
    mean, std = float(bpds.mean()), float(bpds.std() / math.sqrt(len(bpds)))
    head = {"ckpt": k, "step": step, "kind": "bpd", "split": split, "num_values": len(bpds),
            "num_repeats": repeats}
    return record(ctx, path, head, {"bpd": mean, "bpd_std": std}, bpd=bpds, mean_bpd=mean,
                  std_bpd=std)


# ----------------------------------------------------------------------------- samples, FID/IS/KID
def inception_features(ctx: Context, images) -> dict[str, np.ndarray]:
    """Pool features and logits of sharded uint8 images (B, H, W, C), on every process."""
    out = ctx.inception_fn(ctx.inception, images)
    return {key: sharding.gather(out[key]).astype(np.float32) for key in ("pool", "logits")}


def reference_statistics(ctx: Context, path: str | Path) -> dict[str, np.ndarray]:
    """Inception statistics of the whole training split, cached at ``path`` (computed once,
    over the mesh, in batches of ``eval.batch_size``)."""
    path = Path(path)
    if path.is_file():
        return statistics.load_statistics(path)
    logging.info("computing reference Inception statistics of the training data -> %s", path)
    progress = logging_utils.Progress(0, num_batches(ctx.config, "train"),
                                      desc="reference statistics", unit="batch")
    parts = []
    try:
        for b, (_, n, data) in enumerate(global_batches(ctx.config, "train", ctx.batch)):
            # 8-bit images like the samples' (one compiled Inception step for both)
            images = np.round(np.asarray(data["image"]) * 255.0).astype(np.uint8)
            feats = inception_features(ctx, sharding.global_array(images, ctx.mesh))
            parts.append({key: v[:n] for key, v in feats.items()})
            progress.update(b + 1)
    finally:
        progress.close()
    if jax.process_index() == 0:
        io.savez_atomic(path, **{key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    sharding.barrier("reference_statistics")
    return statistics.load_statistics(path)


def _round(ctx: Context, params, key, r: int, host_file: Path, round_file: Path) -> np.ndarray:
    """Sampling round r (samples r·B .. r·B + B − 1): this process's rows -> ``host_file``;
    the Inception features (images) or the samples (flat data) of all rows -> ``round_file``
    (process 0). Returns the round's NFE."""
    idx = np.arange(r * ctx.batch, (r + 1) * ctx.batch)
    x, nfe = ctx.sample_fn(params, key, sharding.global_array(idx, ctx.mesh))
    nfe = np.asarray(sharding.gather(nfe))
    if is_flat(ctx.config):
        out = np.asarray(datasets.get_data_inverse_scaler(ctx.config)(sharding.gather(x)),
                         np.float32)
        positions = sharding.local_rows(x)[0]
        rows, whole = out[positions], {"samples": out}
    else:
        images = ctx.quantize_fn(x)
        positions, rows = sharding.local_rows(images)
        whole = inception_features(ctx, images)
    io.savez_atomic(host_file, indices=idx[positions], samples=rows, nfe=nfe)
    if jax.process_index() == 0:
        io.savez_atomic(round_file, indices=idx, nfe=nfe, **whole)
    return nfe


def _toy_report(config, samples: np.ndarray) -> dict[str, float]:
    """Sliced Wasserstein of all ``samples`` to the whole test set (``data.toy_eval_size``
    points), and the mean log-density of the samples under the true mixture (GMM)."""
    data = np.concatenate([b["image"] for b in datasets.get_dataset(
        config, "test", evaluation=True, shard=(0, 1), drop_remainder=False)])
    sw = analytic.sliced_wasserstein(jax.random.PRNGKey(0), jax.numpy.asarray(samples),
                                     jax.numpy.asarray(data))
    report = {"sliced_wasserstein": float(sw)}
    if toy.toy_name(config.data) == "gmm":
        mixture = toy.gaussian_mixture_from_config(config.data)
        report["gmm_log_prob"] = float(np.mean(mixture.log_prob(jax.numpy.asarray(samples))))
    return report


REPORT_METRICS = ("sliced_wasserstein", "gmm_log_prob", "inception_score", "fid", "kid")


def eval_samples(ctx: Context, params, key, k: int, step: int) -> dict:
    """``eval.num_samples`` samples in rounds of the global batch, then FID / IS / KID (images)
    or the toy report -> ``report_{k}.npz``."""
    path = ctx.eval_dir / f"report_{k}.npz"
    if path.is_file():
        data = io.read_npz(path)
        return {name: float(data[name]) for name in REPORT_METRICS if name in data}
    n = int(ctx.config.eval.num_samples)
    num_rounds = math.ceil(n / ctx.batch)
    host, folder = jax.process_index(), ctx.eval_dir / f"ckpt_{k}"
    progress = logging_utils.Progress(0, num_rounds, desc=f"checkpoint {k} samples", unit="round")
    try:
        for r in range(num_rounds):
            host_file = host_dir(ctx.eval_dir, k, host) / f"samples_{r}.npz"
            round_file = folder / f"round_{r}.npz"
            missing = not host_file.is_file() or (host == 0 and not round_file.is_file())
            if sharding.any_process([missing])[0]:
                nfe = _round(ctx, params, key, r, host_file, round_file)
                logging.info("checkpoint %d, sampling round %d of %d: %s NFE", k, r + 1,
                             num_rounds, np.max(nfe))
            progress.update(r + 1)
    finally:
        progress.close()
    sharding.barrier(f"samples_{k}")
    if host != 0:
        return {}
    loaded = [io.read_npz(folder / f"round_{r}.npz") for r in range(num_rounds)]
    if is_flat(ctx.config):
        report = _toy_report(ctx.config, np.concatenate([d["samples"] for d in loaded])[:n])
    else:
        stats = {key: np.concatenate([d[key] for d in loaded])[:n] for key in ("pool", "logits")}
        report = statistics.metrics_from_statistics(stats, ctx.ref_stats)
        if n < PAPER_NUM_SAMPLES:
            logging.warning("checkpoint %d: FID of %d samples is not the paper's FID (50 000 "
                            "samples); it is biased upwards", k, n)
    logging.info("checkpoint %d: %s", k, report)
    nfe = np.concatenate([np.atleast_1d(d["nfe"]) for d in loaded])
    head = {"ckpt": k, "step": step, "kind": "samples", "num_samples": n,
            "nfe": float(np.mean(nfe)), **ctx.protocol}
    return record(ctx, path, head, report, **report, num_samples=n,
                  **{key: np.asarray(v) for key, v in ctx.protocol.items()})
