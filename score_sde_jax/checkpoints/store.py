"""Checkpoints of a training state (``train_lib.TrainState``) with orbax-checkpoint.

Layout (as the official code): ``workdir/checkpoints/<step>`` are the kept snapshots and
``workdir/checkpoints-meta/<step>`` the preemption checkpoint (only the last is kept). Each
``<step>`` directory holds the items ``state`` (step, params, opt_state, params_ema, rng as a
nested dict of arrays) and ``meta`` (JSON: step and the training config).

Atomicity: orbax writes ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` only once
every item is written, so a process killed mid-save leaves at most a ``*-tmp`` directory, which
:func:`all_steps` ignores and the next :class:`Checkpointer` deletes. A numbered directory
without its ``state`` item (an empty ``mkdir``, a partial copy) is not a checkpoint either:
:func:`all_steps` skips it with a warning, so every reader falls back to the newest complete one.
Every path is made absolute here (orbax requires it), so relative work directories work.

Every array's CRC-32 is written in ``meta`` and checked on restore: damaged bytes raise
:class:`CorruptCheckpointError` (training then resumes from an older checkpoint; sampling and
evaluation refuse in one line). Restoring checks the saved tree against the template first and raises
:class:`CheckpointMismatchError` naming the path and the first key that differs; an
unreadable one raises :class:`CorruptCheckpointError`. :func:`find_checkpoints` is the one walk
over a work directory's checkpoints (newest first); :func:`load_ema_params` restores the EMA
parameters alone, with no optimizer state built or read.

Test hook: ``SCORE_SDE_JAX_CKPT_PAUSE="during:<step>:<seconds>"`` (or ``after:...``; several
comma-separated; ``...:<seconds>:checkpoints`` for the snapshots only, ``:checkpoints-meta`` for
the preemption checkpoints only) sleeps while the checkpoint of ``<step>`` is half-written (or
just after it is complete), so that tests can kill or signal the process at that moment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization, traverse_util

from score_sde_jax import sharding
from score_sde_jax.checkpoints.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from score_sde_jax.checkpoints.faults import quiet_orbax, save_error
from score_sde_jax.models import utils as mutils

SNAPSHOT_DIR = "checkpoints"
PREEMPTION_DIR = "checkpoints-meta"
PAUSE_ENV = "SCORE_SDE_JAX_CKPT_PAUSE"
_MAX_LISTED = 3


def _pause(phase: str, step: int, directory: str) -> None:
    for rule in filter(None, os.environ.get(PAUSE_ENV, "").split(",")):
        when, at, seconds, *where = rule.split(":")
        if when == phase and int(at) == step and where in ([], [directory]):
            time.sleep(float(seconds))


class _MetaHandler(ocp.JsonCheckpointHandler):
    """JSON item ``meta``; honours the ``during`` pause while the checkpoint is in its tmp dir."""

    async def async_save(self, directory, item=None, args=None):
        futures = await super().async_save(directory, item, args)
        _pause("during", int(args.item["step"]), epath.Path(directory).parent.parent.name)
        return futures


@ocp.args.register_with_handler(_MetaHandler, for_save=True)
@dataclasses.dataclass
class _MetaSave(ocp.args.JsonSave):
    pass


@ocp.args.register_with_handler(_MetaHandler, for_restore=True)
@dataclasses.dataclass
class _MetaRestore(ocp.args.JsonRestore):
    pass


def step_dirs(workdir: str | os.PathLike) -> tuple[Path, Path]:
    """(snapshot directory, preemption directory) of a workdir, as absolute paths."""
    workdir = Path(workdir).absolute()
    return workdir / SNAPSHOT_DIR, workdir / PREEMPTION_DIR


_warned_incomplete: set[Path] = set()


def all_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in ``directory`` (ascending; [] if it does not exist).

    A numbered directory without a ``state`` folder is skipped (with one warning per path)."""
    d = Path(directory).absolute()
    if not d.is_dir():
        return []
    steps = []
    for p in d.iterdir():
        if not (p.name.isdigit() and p.is_dir()):
            continue
        if (p / "state").is_dir():
            steps.append(int(p.name))
        elif p not in _warned_incomplete:
            _warned_incomplete.add(p)
            logging.warning("%s is not a complete checkpoint (it has no state/ folder): "
                            "ignored; the newest complete checkpoint is used instead", p)
    return sorted(steps)


def latest_step(directory: str | os.PathLike) -> int | None:
    steps = all_steps(directory)
    return steps[-1] if steps else None


def _config_json(config) -> Any:
    if config is None:
        return None
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
        else config


class Checkpointer:
    """Saves states as ``directory/<step>``, keeping the last ``max_to_keep`` (None: all)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = None):
        self.directory = Path(directory).absolute()
        quiet_orbax()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(
            epath.Path(self.directory), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": _MetaHandler()})

    def save(self, state, config=None) -> Path:
        """Write ``state`` (a TrainState) as ``directory/<state.step>``; returns that path.

        Every process must call it (multi-host saves are collective)."""
        step = int(jax.device_get(state.step))
        tree = jax.tree_util.tree_map(_host_copy, serialization.to_state_dict(state))
        meta = {"step": step, "config": _config_json(config), "checksums": checksums(tree)}
        self._remove(step)
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=_MetaSave(meta)), force=True)
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 -- a full disk: one named OSError (faults.py)
            error = save_error(e, self.directory, step)
            if error is e:
                raise
            raise error from e
        _pause("after", step, self.directory.name)
        return self.directory / str(step)

    def _remove(self, step: int) -> None:
        """Make room for ``step``: an unreadable checkpoint training resumed before, or a
        numbered folder that is no checkpoint (process 0 deletes; all processes wait)."""
        if not (self.directory / str(step)).exists():
            return
        self._manager.reload()
        if step in self._manager.all_steps():
            self._manager.delete(step)
        elif jax.process_index() == 0:
            shutil.rmtree(self.directory / str(step))
        sharding.barrier(f"checkpoint_remove_{step}")
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


def checksums(tree: Mapping) -> dict[str, str]:
    """CRC-32 of the bytes of every array of a state tree, by its '/'-joined path: written with
    a checkpoint and compared on restore, so damaged bytes are a named error, not silent NaNs."""
    out = {}
    for key, value in _flat(tree).items():
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            continue  # a shard of another process: that process checks it
        data = np.ascontiguousarray(np.asarray(jax.device_get(value)))
        out[key] = f"{zlib.crc32(data.view(np.uint8).reshape(-1)) if data.size else 0:08x}"
    return out


def _verify(path: Path, restored: Mapping) -> None:
    """CorruptCheckpointError naming the first array whose checksum differs from the one saved
    (checkpoints written before checksums existed are not checked)."""
    saved = read_meta(path.parent, int(path.name)).get("checksums") or {}
    for key, value in checksums(restored).items():
        if key in saved and saved[key] != value:
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt: the bytes of {key} do not match the checksum "
                "written with it")


def _host_copy(x):
    """Replicated device arrays as NumPy (orbax would slice every device's copy otherwise)."""
    if isinstance(x, jax.Array) and x.is_fully_replicated:
        return np.asarray(x)
    return x


def read_meta(directory: str | os.PathLike, step: int) -> dict:
    """The ``meta`` item (step, config) of a checkpoint, {} if it has none."""
    path = Path(directory).absolute() / str(step) / "meta"
    if not path.exists():
        return {}
    try:
        return dict(ocp.JsonCheckpointHandler().restore(epath.Path(path)))
    except Exception as e:  # noqa: BLE001 -- reported by name
        raise CorruptCheckpointError(f"checkpoint {path.parent}: its meta item is unreadable "
                                     f"({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    """The first line of an error, without TensorStore's appended spec (a pybind repr)."""
    text, spec = str(e), "See full TensorStore details"
    if spec in text:
        text = text.split(spec)[0].strip().rstrip(".")
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def _flat(tree: Mapping) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree, keep_empty_nodes=False).items()}


def config_differences(saved: Any, config) -> list[str]:
    """'key=saved (now new)' for the config leaves that differ (model / data keys first)."""
    if not isinstance(saved, Mapping) or config is None:
        return []
    old, new = _flat(saved), _flat(_config_json(config))
    keys = sorted(set(old) | set(new), key=lambda k: (not k.startswith(("model/", "data/")), k))
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return [f"{k.replace('/', '.')}={old.get(k)!r} (now {new.get(k)!r})" for k in keys
            if as_list(old.get(k)) != as_list(new.get(k))]


def _check_tree(path: Path, saved: Mapping, template: Mapping, config) -> None:
    """Raise CheckpointMismatchError at the first key / shape that differs."""
    got = {k: tuple(getattr(v, "shape", ())) for k, v in _flat(saved).items()}
    want = {k: tuple(v.shape) if hasattr(v, "shape") else np.shape(v)
            for k, v in _flat(template).items()}
    problems = [f"{k} has shape {got[k]} in the checkpoint but {want[k]} in the state built from "
                "the config" for k in want if k in got and got[k] != want[k]]
    problems += [f"{k} (shape {want[k]}) is missing from the checkpoint" for k in want if k not in got]
    problems += [f"the checkpoint has an unexpected entry {k}" for k in got if k not in want]
    if not problems:
        return
    message = f"checkpoint {path} does not fit the model built from the config: {problems[0]}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more mismatched entries)"
    diffs = config_differences(read_meta(path.parent, int(path.name)).get("config"), config)
    if diffs:
        message += "; it was trained with " + ", ".join(diffs[:_MAX_LISTED])
    raise CheckpointMismatchError(message)


def restore(directory: str | os.PathLike, template_state, step: int | None = None, config=None):
    """The checkpoint ``directory/<step>`` (latest when None) as a state like ``template_state``.

    ``template_state`` fixes the tree, shapes, dtypes and shardings: a ``TrainState`` of
    arrays (``train_lib.create_train_state``) or of ``jax.ShapeDtypeStruct`` with shardings
    (``train_lib.abstract_train_state``, which costs no computation); ``config`` only improves
    the message of a mismatch. Raises CheckpointNotFoundError, CheckpointMismatchError (path
    and first key that differs) or CorruptCheckpointError.
    """
    directory = Path(directory).absolute()
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise CheckpointNotFoundError(f"no complete checkpoint in {directory}")
    restored = _restore_tree(directory, int(step), serialization.to_state_dict(template_state), config)
    return serialization.from_state_dict(template_state, restored)


def _restore_tree(directory: Path, step: int, template: dict, config, partial: bool = False) -> dict:
    """The saved tree of ``directory/<step>`` restored like ``template`` (a dict with ``step``);
    ``partial``: only the entries of ``template`` are read."""
    path = Path(directory).absolute() / str(step) / "state"
    if not path.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint {path.parent} (steps in {directory}: "
                                      f"{all_steps(directory)})")
    quiet_orbax()
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved = handler.metadata(epath.Path(path))
        saved = getattr(saved, "tree", saved)
    except Exception as e:  # noqa: BLE001 -- reported by name
        raise CorruptCheckpointError(f"checkpoint {path.parent} is unreadable: its metadata cannot "
                                     f"be read ({type(e).__name__}: {_first_line(e)})") from e
    _check_tree(path.parent, {k: saved[k] for k in template if k in saved} if partial else saved,
                template, config)
    try:
        restored = handler.restore(epath.Path(path), args=ocp.args.PyTreeRestore(
            item=template, restore_args=ocp.checkpoint_utils.construct_restore_args(template),
            partial_restore=partial))
    except Exception as e:  # noqa: BLE001 -- reported by name
        raise CorruptCheckpointError(f"checkpoint {path.parent} is unreadable "
                                     f"({type(e).__name__}: {_first_line(e)})") from e
    _verify(path.parent, restored)
    if int(np.asarray(restored["step"])) != int(step):
        raise CorruptCheckpointError(f"checkpoint {path.parent} holds step "
                                     f"{int(np.asarray(restored['step']))}, not {step}")
    return restored


# ----------------------------------------------------------------------------- a work directory
def find_checkpoints(workdir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint of a work directory (snapshots and the
    preemption checkpoint), newest first; at equal steps the preemption checkpoint first (the
    one written for resuming)."""
    found = [(s, d) for d in step_dirs(workdir) for s in all_steps(d)]
    found.sort(key=lambda x: (x[0], x[1].name == PREEMPTION_DIR), reverse=True)
    return found


def checkpoint_dir(workdir: str | os.PathLike, step: int | None = None) -> tuple[Path, int]:
    """(directory, step) of the checkpoint at ``step`` of a work directory (the latest when
    None); CheckpointNotFoundError naming the steps there otherwise."""
    found = find_checkpoints(workdir)
    if not found:
        snap, meta = step_dirs(workdir)
        raise CheckpointNotFoundError(f"no checkpoint in {snap} or {meta} (--workdir={workdir})")
    if step is None:
        return found[0][1], found[0][0]
    for s, directory in found:
        if s == int(step):
            return directory, s
    raise CheckpointNotFoundError(f"no checkpoint of step {step} in {workdir}; steps there: "
                                  f"{sorted({s for s, _ in found})}")


def restore_latest(workdir: str | os.PathLike, template_state, config=None):
    """(state, path) of the newest readable checkpoint of a work directory, falling back over
    unreadable ones with a warning; (template_state, None) when there is none."""
    found = find_checkpoints(workdir)
    for step, directory in found:
        try:
            state = restore(directory, template_state, step, config=config)
        except CorruptCheckpointError as e:
            logging.warning("%s; trying an older checkpoint", e)
            continue
        try:
            saved = read_meta(directory, step).get("config")
        except CheckpointError:
            saved = None
        changed = [d for d in config_differences(saved, config)
                   if not d.startswith(("training.n_iters", "eval."))]
        if changed:
            logging.warning("the config differs from the one checkpoint %s was written with: %s",
                            directory / str(step), "; ".join(changed[:8]))
        return state, directory / str(step)
    if found:
        raise CorruptCheckpointError(
            f"none of the checkpoints in {workdir} is readable (steps {[s for s, _ in found]}); "
            "move them away to start afresh")
    return template_state, None


def load_ema_params(config, workdir: str | os.PathLike, step: int | None = None) -> tuple[dict, int]:
    """(EMA parameters, step) of the checkpoint at ``step`` of a work directory (the latest
    when None). Only ``params_ema`` is read: its template is the shape of the config's network
    (``jax.eval_shape``, nothing is computed), and no optimizer state is built or restored."""
    directory, step = checkpoint_dir(workdir, step)
    shapes = jax.eval_shape(lambda: mutils.init_model(jax.random.PRNGKey(0), config)["params"])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    params = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
    template = {"step": jax.ShapeDtypeStruct((), np.int32, sharding=device), "params_ema": params}
    restored = _restore_tree(directory, step, template, config, partial=True)
    return restored["params_ema"], step


def saved_config(workdir: str | os.PathLike) -> dict | None:
    """The training config stored with the newest checkpoint of a work directory (None if
    there is no checkpoint, or it was saved without one)."""
    for step, directory in find_checkpoints(workdir):
        return read_meta(directory, step).get("config") or None
    return None
