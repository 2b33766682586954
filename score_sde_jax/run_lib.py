"""The training loop (``main.py --mode train``), and ``evaluate``, the official name of the
evaluation mode (:mod:`score_sde_jax.evaluation`).

``train(config, workdir)`` resumes from the latest complete checkpoint in ``workdir`` and runs
``train_lib``'s data-parallel step until ``state.step == config.training.n_iters``. After the
update that makes the step count ``s``:

* ``s % log_freq == 0``: log training loss, grad norm, lr and steps/s (logging, TensorBoard,
  ``metrics.jsonl``);
* ``s % eval_freq == 0``: the loss of the EMA weights on a batch of the test split;
* ``s % snapshot_freq_for_preemption == 0``: the preemption checkpoint
  ``workdir/checkpoints-meta/<s>`` (only the last is kept);
* ``s % snapshot_freq == 0`` or ``s == n_iters``: a kept snapshot ``workdir/checkpoints/<s>``
  and, with ``training.snapshot_sampling``, a sample grid ``workdir/samples/iter_<s>/``.

Determinism: update ``s`` uses the key ``fold_in(state.rng, s)``, and its batch is item ``s`` of
a data stream that is restarted at every multiple ``L`` of ``gcd(snapshot_freq,
snapshot_freq_for_preemption)`` with a seed made of ``config.seed`` and ``s // L`` (a resume at
any step ``s`` restarts segment ``s // L`` at its batch ``s % L``, without loading the skipped
examples: ``datasets.local_batches``). The ``e``-th evaluation batch comes the same way from a
stream of the test split (``datasets.eval_batches``). A run that is stopped or killed and resumed from a
checkpoint at any step therefore ends with the same parameters, and logs the same evaluation
losses, as one that was never interrupted. (A stream restarted from a seed was chosen over an
iterator whose state is checkpointed because every source here -- toy samplers, arrays, tfds
``data_source`` -- is then the same few lines, and a checkpoint carries no data-pipeline state
that would tie it to one loader.)

Stopping (:mod:`score_sde_jax.preemption`): SIGTERM / SIGINT finish the update in flight, write
``checkpoints-meta/<s>`` and raise :class:`preemption.TrainingStopped`; ``workdir/train.lock``
keeps a second trainer out. On resume, the snapshot (and sample grid) of the resumed step is
written if the stopped run had not written it, and ``metrics.jsonl`` / TensorBoard records
after that step (from the stopped run) are dropped, so the outputs match an uninterrupted run.

A non-finite loss or gradient norm stops training with :class:`NonFiniteLossError` before the
bad state is saved; the checkpoints already written stay as they are. Data that fail mid-run (a
file damaged after the check at start, an unreadable tfds record) stop training with
:class:`DataFailedError` after the state of the last update is saved as the preemption
checkpoint (one process), so no update is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from score_sde_jax import (
    checkpoints,
    datasets,
    eval_lib,
    evaluation,
    files,
    logging_utils,
    preemption,
    sde_lib,
    sharding,
    train_lib,
)

_FREQ_KEYS = ("log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption")


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient) became NaN or infinite during training."""


class DataFailedError(ValueError):
    """Reading a training or evaluation batch failed mid-run (a file damaged or changed since
    the data were checked, an unreadable record); the state of the last update was saved."""


def _data_failed(error: Exception, config, state, step: int, start: int, pending,
                 last_good: str, checkpointer) -> DataFailedError:
    """The error to raise when the data fail before update ``step + 1``: the updates since the
    last checkpoint are kept by saving ``state`` (step ``step``) as the preemption checkpoint,
    after checking that the last update was finite (a single process only: with several, the
    others would wait in the collective save for a process that never comes)."""
    if pending is not None:
        _check_finite(*pending, last_good)
    saved = last_good
    if step > start and jax.process_count() == 1 and step not in checkpoints.all_steps(
            checkpointer.directory):
        saved = f"the state of step {step} was saved to {checkpointer.save(state, config)}"
    return DataFailedError(f"training stopped at step {step}: reading the data failed "
                           f"({type(error).__name__}: {error}); {saved}. Fix the data and run the "
                           "same command again to resume")


def _validate(config) -> int:
    """Check the training schedule keys and the SDE; returns n_jitted_steps."""
    sde_lib.get_sde(config)
    t = config.training
    for key in ("n_iters", "batch_size", *_FREQ_KEYS):
        if int(t[key]) <= 0:
            raise ValueError(f"config.training.{key}={t[key]} must be positive")
    k = int(t.n_jitted_steps)
    if k <= 0:
        raise ValueError(f"config.training.n_jitted_steps={k} must be positive")
    for key in _FREQ_KEYS:
        if int(t[key]) % k:
            raise ValueError(f"config.training.{key}={t[key]} must be a multiple of "
                             f"config.training.n_jitted_steps={k}")
    return k


def chunk_sizes(start: int, stop: int, k: int) -> Iterator[int]:
    """Updates per call: k while k more fit before ``stop``, then single updates."""
    step = start
    while step < stop:
        n = k if step + k <= stop else 1
        yield n
        step += n


def _global_batches(batches: Iterator[dict], sizes: Iterator[int], mesh) -> Iterator[dict]:
    """Global device batches, one per call of the train step, from this process's local batches
    (stacked (n, B, ...) when a call runs n > 1 updates)."""
    for n in sizes:
        parts = [next(batches) for _ in range(n)]
        local = parts[0] if n == 1 else {key: np.stack([p[key] for p in parts]) for key in parts[0]}
        yield sharding.make_global_batch(local, mesh, stacked=n > 1)


def _check_finite(first_step: int, metrics: dict, last_good: str) -> None:
    loss = np.atleast_1d(np.asarray(jax.device_get(metrics["loss"])))
    norm = np.atleast_1d(np.asarray(jax.device_get(metrics["grad_norm"])))
    bad = ~(np.isfinite(loss) & np.isfinite(norm))
    if bad.any():
        i = int(np.argmax(bad))
        raise NonFiniteLossError(
            f"training stopped: update {first_step + i + 1} gave loss {loss[i]} and gradient norm "
            f"{norm[i]}; the state was not saved and {last_good}. Lower config.optim.lr or "
            "check the data.")


def _make_sampler(config, mesh):
    """Jitted ``(params, rng) -> samples`` of ``config.training.batch_size`` with
    ``config.sampling`` (sample i from ``fold_in(rng, i)``), sharded over the mesh."""
    batch = int(config.training.batch_size)

    def build():
        sde, eps = sde_lib.get_sde(config)
        sample = eval_lib.get_sample_fn(config, sde, eval_lib.score_fn_builder(config, sde), batch,
                                        eps, mesh)
        return lambda params, rng: sample(params, rng, sharding.global_array(np.arange(batch), mesh))[0]

    return train_lib.cached_jit(("sampler", mesh), config, build)


def _write_samples(config, sampler, state, workdir: Path, step: int) -> None:
    x = sharding.gather(sampler(state.params_ema,
                                jax.random.fold_in(jax.random.fold_in(state.rng, 2), step)))
    if sharding.is_main_process():
        x = datasets.get_data_inverse_scaler(config)(np.asarray(x, np.float32))
        paths = files.write_samples(Path(workdir) / "samples" / f"iter_{step}" / "sample", x,
                                    logging_utils.sample_title(config, step))
        logging.info("step %d: samples written to %s", step, paths["png"] or paths["npz"])


def train(config, workdir: str | Path, mesh=None) -> train_lib.TrainState:
    """Train (or resume training) ``config`` in ``workdir``; returns the final state.

    ``mesh``: the data-parallel mesh (default ``sharding.make_mesh()``: every device of every
    process); ``sharding.make_mesh(devices)`` trains on fewer. Raises
    :class:`preemption.WorkdirLockedError` (another live run trains ``workdir``; nothing is
    written) and, after SIGTERM / SIGINT, :class:`preemption.TrainingStopped` once the
    checkpoint of the current step is written."""
    k = _validate(config)
    datasets.check_data(config)  # bad data fails here, before anything is created
    mesh = mesh or sharding.make_mesh()
    sharding.check_batch_size(int(config.training.batch_size), mesh)
    train_lib.check_grad_accum(config, mesh)
    workdir = Path(workdir).absolute()  # orbax and the messages want absolute paths
    with preemption.WorkdirLock(workdir), preemption.StopSignals() as stop:
        return _train(config, workdir, mesh, k, stop)


def _complete_resumed_step(config, state, workdir: Path, snapshots, sampler) -> str | None:
    """The snapshot (and sample grid) of the resumed step when an uninterrupted run would
    have written it and the stopped run had not; returns the snapshot path if written."""
    step, t = int(jax.device_get(state.step)), config.training
    if step == 0 or (step % int(t.snapshot_freq) and step != int(t.n_iters)):
        return None
    path = None
    if step not in checkpoints.all_steps(snapshots.directory):
        path = snapshots.save(state, config)
        logging.info("step %d: wrote the missing snapshot %s", step, path)
    if sampler is not None and not (workdir / "samples" / f"iter_{step}" / "sample.npz").exists():
        _write_samples(config, sampler, state, workdir, step)
    return None if path is None else str(path)


def _train(config, workdir: Path, mesh, k: int, stop: preemption.StopSignals):
    t = config.training
    template = train_lib.abstract_train_state(config, sharding.replicated(mesh))
    state, resumed = checkpoints.restore_latest(workdir, template, config)
    if resumed is None:
        state = sharding.replicate(
            train_lib.create_train_state(config, jax.random.PRNGKey(int(config.seed))), mesh)
    start, n_iters = int(jax.device_get(state.step)), int(t.n_iters)
    logging.info("%s at step %d of %d on %d device(s), %d process(es)",
                 f"resuming from {resumed}" if resumed else "starting", start, n_iters,
                 mesh.devices.size, jax.process_count())
    last_good = f"the last checkpoint is {resumed}" if resumed else "no checkpoint was written"

    snap_dir, meta_dir = checkpoints.step_dirs(workdir)
    # creating the managers removes the *.orbax-checkpoint-tmp left by a killed run
    snapshots, preemption_ckpt = (checkpoints.Checkpointer(snap_dir),
                                  checkpoints.Checkpointer(meta_dir, 1))
    progress = logging_utils.Progress(start, n_iters)  # compile time is left out of its rates
    sample = t.snapshot_sampling and t.task == "score"
    sampler = (logging_utils.announce_compile(_make_sampler(config, mesh), "snapshot sampler",
                                              progress) if sample else None)
    feed = writer = None
    try:
        written = _complete_resumed_step(config, state, workdir, snapshots, sampler)
        last_good = f"the last checkpoint is {written}" if written else last_good
        if start >= n_iters:
            return state
        steps = {n: logging_utils.announce_compile(
            train_lib.compile_train_step(config, mesh, n),
            "train step" + (f" ({n} updates a call)" if n > 1 else ""), progress) for n in {1, k}}
        eval_step = logging_utils.announce_compile(train_lib.compile_eval_step(config, mesh),
                                                   "eval step", progress)
        eval_data = datasets.eval_batches(config, start)
        feed = datasets.Prefetch(_global_batches(datasets.local_batches(config, start),
                                                 chunk_sizes(start, n_iters, k), mesh))
        writer = logging_utils.MetricWriter(workdir, purge_after=start)
        step, pending = start, None
        for n in chunk_sizes(start, n_iters, k):
            try:
                batch = next(feed)
            except Exception as e:  # noqa: BLE001 -- any failure of the data: keep the steps
                raise _data_failed(e, config, state, step, start, pending, last_good,
                                   preemption_ckpt) from e
            state, metrics = steps[n](state, batch)
            if pending is not None:  # the previous call's metrics, fetched one call late
                _check_finite(*pending, last_good)
            pending, step = (step, metrics), step + n
            progress.update(step)
            crossed = lambda freq, s=step, m=n: (s // freq) > ((s - m) // freq)  # noqa: E731
            boundary = any(crossed(int(t[key])) for key in _FREQ_KEYS) or step == n_iters
            # every process polls at the same steps; with several, only where all wait anyway
            signum = stop.poll(sync=boundary) if step < n_iters else 0
            if not boundary and not signum:
                continue
            _check_finite(*pending, last_good)
            pending = None
            if crossed(int(t.log_freq)):
                last = {key: float(np.atleast_1d(jax.device_get(v))[-1]) for key, v in metrics.items()}
                values = {"training_loss": last.pop("loss"), **last,
                          "steps_per_sec": progress.rate(step)}
                logging.info("step %d: %s", step, logging_utils.format_metrics(values))
                progress.update(step, values["training_loss"])
                writer.scalars(step, values)
            if crossed(int(t.eval_freq)):
                try:
                    batch = sharding.make_global_batch(next(eval_data), mesh)
                except Exception as e:  # noqa: BLE001 -- any failure of the data: keep the steps
                    raise _data_failed(e, config, state, step, start, None, last_good,
                                       preemption_ckpt) from e
                values = {f"eval_{key}": float(v) for key, v in eval_step(state, batch).items()}
                logging.info("step %d: %s", step, logging_utils.format_metrics(values))
                writer.scalars(step, values)
            stop_path = None
            if crossed(int(t.snapshot_freq_for_preemption)) or signum:
                stop_path = preemption_ckpt.save(state, config)
                last_good = f"the last checkpoint is {stop_path}"
            if crossed(int(t.snapshot_freq)) or step == n_iters:
                last_good = f"the last checkpoint is {snapshots.save(state, config)}"
                if sampler is not None:
                    with progress.paused(f"step {step}: drawing {int(t.batch_size)} snapshot "
                                         f"samples ({config.sampling.method})"):
                        _write_samples(config, sampler, state, workdir, step)
            writer.flush()
            if signum:
                raise preemption.TrainingStopped(signum, step, stop_path)
    finally:
        for closing in (feed, progress, writer, snapshots, preemption_ckpt):
            if closing is not None:
                closing.close()
    logging.info("finished at step %d; %s", step, last_good)
    return state


def evaluate(config, workdir: str, eval_folder: str = "eval"):
    """``main.py --mode eval`` (the official name): :func:`score_sde_jax.evaluation.evaluate`."""
    return evaluation.evaluate(config, workdir, eval_folder)
