"""What the training loop writes for people: TensorBoard event files, a JSON-lines metrics file,
PNG sample grids (via :mod:`score_sde_jax.evaluation.files`) and a progress bar with steps/s.

Only process 0 writes; on the other processes every writer is a no-op.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from score_sde_jax.evaluation import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Scalars to ``workdir/tensorboard`` (tensorboardX) and ``workdir/metrics.jsonl`` (one
    ``{"step": s, "time": unix, name: value, ...}`` record per call), images to TensorBoard.

    ``purge_after=s`` (training resumed at step s): the records of later steps, written by the
    run that stopped after its checkpoint of step s, are dropped from both."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None,
                 purge_after: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = Path(workdir)
        self._tb = None
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            if purge_after is not None:
                _drop_records_after(self.workdir / METRICS_FILE, purge_after)
            self._tb = SummaryWriter(str(self.workdir / TENSORBOARD_DIR),
                                     purge_step=None if not purge_after else purge_after + 1)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)
        record = {"step": int(step), "time": time.time(), **values}
        with open(self.workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """An (H, W, C) uint8 image."""
        if self.enabled:
            self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _drop_records_after(path: Path, step: int) -> None:
    """Rewrite ``path`` (atomically) without the records of steps > ``step`` and without a
    line cut short by a kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` in order ([] if there is none)."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A tqdm bar (process 0, interactive terminals only) plus a steps/s meter for the logs."""

    def __init__(self, start: int, total: int, enabled: bool | None = None):
        from tqdm import tqdm

        show = None if (jax.process_index() == 0 if enabled is None else enabled) else True
        self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                         disable=show)
        self._last_step, self._last_time = start, time.perf_counter()

    def update(self, step: int, loss: float | None = None) -> None:
        self._bar.update(step - self._bar.n)
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def rate(self, step: int) -> float:
        """Steps per second since the previous call."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return rate

    def close(self) -> None:
        self._bar.close()


def save_samples(samples: np.ndarray, directory: str | os.PathLike, title: str) -> Path:
    """Samples in data space ([0, 1] images (N, H, W, C) or points (N, D)) as
    ``directory/sample.npz`` and ``directory/sample.png`` (a grid, or a scatter plot of 2-D
    points); returns the PNG path (the .npz path for other flat data)."""
    directory = Path(directory)
    samples = np.asarray(samples, np.float32)
    files.savez_atomic(directory / "sample.npz", samples=samples)
    if samples.ndim == 4:
        return files.save_image_grid(samples, directory / "sample.png")
    if samples.ndim == 2 and samples.shape[1] == 2:
        return files.save_scatter(samples, directory / "sample.png", title)
    return directory / "sample.npz"


def format_metrics(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.5g}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
                     for k, v in values.items())


def setup_logging(level: int = logging.INFO) -> None:
    """Plain ``LEVEL message`` lines on stderr (absl's handler is not installed outside app.run);
    processes other than 0 log warnings and errors only. Call after jax.distributed.initialize."""
    if jax.process_index() != 0:
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", force=True)
    for noisy in ("absl", "jax", "orbax"):  # orbax logs every save at INFO through absl
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
