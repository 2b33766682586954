"""What the loops tell people: TensorBoard event files, a JSON-lines metrics file, progress (a
bar in a terminal, periodic lines in a log file), a line around every compilation, and the
title of a picture of samples.

Only process 0 writes; on the other processes every writer is a no-op.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import jax
import numpy as np
import tqdm

T = TypeVar("T")
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


_CACHE_HITS = [0]  # programs loaded from the persistent compilation cache in this process


def _count_cache_hits(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _CACHE_HITS[0] += 1


jax.monitoring.register_event_listener(_count_cache_hits)


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside the block (as it was after). Tracing a
    network allocates millions of short-lived objects, and the collections they trigger walk
    every live object: 1.1 of the 3.6 s of tracing and lowering the CIFAR-10 DDPM++ train
    step (BENCHMARKS.md section 13). Reference counting still frees all but cycles, which the
    next collection after the block finds."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def announce_compile(fn: Callable[..., T], what: str,
                     progress: Progress | None = None) -> Callable[..., T]:
    """``fn`` (a jitted function) that logs ``compiling the {what} ...`` before its first call
    and ``compiled the {what} in 12.3 s`` once it is compiled. The first call traces and
    compiles (``fn.lower(...).compile()``, with :func:`cyclic_gc_paused`; the jitted function
    then reuses that program), logs, then runs: the time logged is the compilation's alone,
    whether execution is asynchronous or not (``cli.keep_freed_host_memory`` makes it
    synchronous on CPU), and both are left out of ``progress``'s rates. A ``fn`` without
    ``lower`` is timed over its whole first call. Later calls go straight to ``fn``."""
    done = False

    def call(*args, **kwargs):
        nonlocal done
        if done:
            return fn(*args, **kwargs)
        logging.info("compiling the %s ...", what)
        hits, start = _CACHE_HITS[0], time.perf_counter()
        lower = getattr(fn, "lower", None)
        with progress.paused() if progress is not None else contextlib.nullcontext():
            with cyclic_gc_paused():
                out = fn(*args, **kwargs) if lower is None else lower(*args, **kwargs).compile()
            cached = _CACHE_HITS[0] - hits
            logging.info("compiled the %s in %.1f s%s", what, time.perf_counter() - start,
                         f" ({cached} program(s) loaded from the compilation cache)" if cached
                         else "")
            if lower is not None:
                out = fn(*args, **kwargs)
        done = True
        return out

    return call


class Progress:
    """Progress of a long loop on process 0: a tqdm bar when stderr is a terminal, else (a log
    file, a pipe) one ``INFO {desc}: 150/5001 step (3%), 2.31 step/s, loss 0.123, 35 min left``
    line every ``interval`` seconds. Time spent inside :meth:`paused` (e.g. drawing snapshot
    samples during training) counts neither in :meth:`rate` nor in the bar's speed.

    ``update(n)`` sets the position (absolute, not an increment)."""

    def __init__(self, start: int, total: int, enabled: bool | None = None, *,
                 desc: str = "train", unit: str = "step", interval: float = 30.0,
                 terminal: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        self.desc, self.unit, self.total, self.interval = desc, unit, int(total), float(interval)
        self.n, self.loss = int(start), None
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = None
        if self.enabled and terminal:
            self._bar = tqdm.tqdm(total=total, initial=start, unit=unit, desc=desc,
                                  dynamic_ncols=True, file=sys.stderr)
        now = time.perf_counter()
        self._paused, self._depth = 0.0, 0  # seconds spent in paused() so far; nesting
        self._last_rate = (self.n, now, 0.0)
        self._last_line = now
        self._line_mark = (self.n, now, 0.0)

    def _active_time(self, since: float, paused_then: float) -> float:
        return time.perf_counter() - since - (self._paused - paused_then)

    def update(self, n: int, loss: float | None = None) -> None:
        """Move to position ``n``; ``loss`` is shown with the bar / line."""
        if loss is not None:
            self.loss = float(loss)
        if not self.enabled:
            self.n = int(n)
            return
        if self._bar is not None:
            self._bar.update(int(n) - self._bar.n)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self.n = int(n)
        if self._bar is None and time.perf_counter() - self._last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        n0, t0, p0 = self._line_mark
        speed = (self.n - n0) / max(self._active_time(t0, p0), 1e-9)
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}"
                 f" ({100 * self.n / max(self.total, 1):.0f}%)", f"{speed:.3g} {self.unit}/s"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if speed > 0 and self.n < self.total:
            parts.append(f"{_duration((self.total - self.n) / speed)} left")
        logging.info("%s", ", ".join(parts))
        now = time.perf_counter()
        self._last_line, self._line_mark = now, (self.n, now, self._paused)

    def rate(self, n: int) -> float:
        """Units per second since the previous call (or the start), time in :meth:`paused`
        excluded."""
        n0, t0, p0 = self._last_rate
        rate = (int(n) - n0) / max(self._active_time(t0, p0), 1e-9)
        self._last_rate = (int(n), time.perf_counter(), self._paused)
        return rate

    @contextlib.contextmanager
    def paused(self, message: str | None = None) -> Iterator[None]:
        """Time inside is left out of the rates; ``message`` is logged first, and the time the
        block took after it."""
        if message:
            logging.info("%s ...", message)
        start = time.perf_counter()
        self._depth += 1
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self._depth -= 1
            if self._depth == 0:  # a pause inside a pause is counted once
                self._paused += took
                if self._bar is not None:  # tqdm's rate: shift its clock by the pause
                    self._bar.start_t += took
                    self._bar.last_print_t += took
            if message:
                logging.info("%s: done in %.1f s", message, took)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _TqdmHandler(logging.StreamHandler):
    """Log records through ``tqdm.write``: a progress bar on the same terminal is cleared,
    the line printed, and the bar redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 -- logging must never raise
            self.handleError(record)


def sample_title(config, step: int) -> str:
    """``'VPSDE, pc sampler (euler_maruyama, none), step 20'``: what drew a picture of samples."""
    s = config.sampling
    method = str(s.method).lower()
    detail = f" ({s.predictor}, {s.corrector})" if method == "pc" else ""
    return f"{str(config.training.sde).upper()}, {method} sampler{detail}, step {step}"


def format_metrics(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.5g}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
                     for k, v in values.items())


def setup_logging(level: int = logging.INFO) -> None:
    """Plain ``LEVEL message`` lines on stderr (absl's handler is not installed outside app.run),
    written around a :class:`Progress` bar rather than into it; processes other than 0 log
    warnings and errors only. Call after jax.distributed.initialize."""
    if jax.process_index() != 0:
        level = max(level, logging.WARNING)
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("absl", "jax", "orbax"):  # orbax logs every save at INFO through absl
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
