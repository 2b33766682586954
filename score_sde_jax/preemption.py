"""What lets ``--mode train`` be stopped the way people and clusters stop it: SIGTERM / SIGINT
turned into a checkpoint at the current step (:class:`StopSignals`, :class:`TrainingStopped`),
and a lock that keeps a second trainer out of a work directory (:class:`WorkdirLock`).

Stopping: the first SIGTERM (spot / preemptible VMs, Cloud TPU maintenance, SLURM ``--signal``,
``kill``) or SIGINT (Ctrl-C) only sets a flag; the training loop finishes the update in flight,
writes the preemption checkpoint ``checkpoints-meta/<step>`` and raises :class:`TrainingStopped`
(``main.py`` exits with ``128 + signal``: 143 for SIGTERM, 130 for SIGINT). A second Ctrl-C
raises ``KeyboardInterrupt`` at once; checkpoints are renamed into place only when complete, so
that never leaves a half-written one. On several processes the flag is all-gathered at the
steps where every process already waits for the device (the logging / eval / checkpoint steps),
so all of them stop at the same step even if only one got the signal, and no process waits
for a collective the others never enter.

Lock: ``workdir/train.lock`` (JSON: host, pid, start time) is created atomically by process 0
and its modification time is a heartbeat, refreshed every ``SCORE_SDE_JAX_LOCK_HEARTBEAT_S``
(30) seconds. A lock whose process is gone (same host) or whose heartbeat is older than
``SCORE_SDE_JAX_LOCK_STALE_S`` (300) seconds is taken over with a warning, and so is one that
names no trainer (empty or damaged: no host and pid once it is half a second old); any other
lock makes the second trainer fail at once (:class:`WorkdirLockedError`), before it writes
anything. A value of either variable that is not a positive number is an error naming it.
Evaluation and sampling do not take the lock: they may read a work directory being trained.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np

from score_sde_jax import sharding

LOCK_FILE = "train.lock"
HEARTBEAT_ENV, STALE_ENV = "SCORE_SDE_JAX_LOCK_HEARTBEAT_S", "SCORE_SDE_JAX_LOCK_STALE_S"


class WorkdirLockedError(RuntimeError):
    """Another live training holds the work directory's lock."""


class TrainingStopped(Exception):
    """Training stopped on a signal after writing the checkpoint ``path`` of ``step``."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = int(signum), int(step), Path(path)
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"checkpoint {path} written")

    @property
    def exit_code(self) -> int:
        """``128 + signal``, as a shell reports a process killed by it (143 for SIGTERM)."""
        return 128 + self.signum


class StopSignals:
    """Context manager catching SIGTERM and SIGINT during training (main thread only).

    ``poll(sync)`` returns the signal that asks to stop (0: none). With one process it is the
    local flag; with several it is 0 unless ``sync``, when every process must call it at the
    same step: it then all-gathers the flags, so all processes agree.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():  # None: a handler installed outside Python
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt("second Ctrl-C")
            return
        self.signum = signum
        logging.warning("received %s: stopping after the update in flight with a checkpoint%s",
                        signal.Signals(signum).name,
                        " (Ctrl-C again to stop at once, without it)" if signum == signal.SIGINT
                        else "")

    def poll(self, sync: bool) -> int:
        if jax.process_count() == 1:
            return self.signum
        if not sync:
            return 0
        return sharding.max_over_processes(self.signum)


# ----------------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _read(path: Path) -> tuple[dict, float] | None:
    """(holder record, heartbeat time) of a lock file, None if there is none."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError:  # being written this instant, or damaged: judged by its heartbeat
        info = {}
    return (info if isinstance(info, dict) else {}), mtime


def _describe(info: dict, mtime: float) -> str:
    start = info.get("start")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)) if start else "?"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {since}, "
            f"last heartbeat {time.time() - mtime:.0f} s ago")


def _is_record(info: dict) -> bool:
    """Whether a lock's content names its holder (a host string and an integer pid)."""
    return isinstance(info.get("host"), str) and isinstance(info.get("pid"), int)


def _env_seconds(name: str, default: float) -> float:
    """The positive number of seconds in the environment variable ``name`` (default when unset);
    anything else is a ValueError naming the variable."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={text!r} is not a positive number of seconds (unset it for "
                         f"the default, {default:g})")
    return value


def _stale_reason(info: dict, mtime: float, stale_after: float) -> str | None:
    if not _is_record(info):
        return ("it holds no trainer record (an empty or damaged file, not written by a "
                "training of this version)")
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
            and not _pid_alive(info["pid"]):
        return f"process {info['pid']} no longer exists"
    if time.time() - mtime > stale_after:
        return f"its heartbeat is {time.time() - mtime:.0f} s old (> {stale_after:.0f} s)"
    return None


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds ``workdir/train.lock`` (see the module docstring).

    Only process 0 touches the file; the others learn from it whether to go on."""

    def __init__(self, workdir: str | os.PathLike, heartbeat_s: float | None = None,
                 stale_after_s: float | None = None):
        self.path = Path(workdir).absolute() / LOCK_FILE
        self.heartbeat_s = float(_env_seconds(HEARTBEAT_ENV, 30) if heartbeat_s is None
                                 else heartbeat_s)
        self.stale_after_s = float(_env_seconds(STALE_ENV, 300) if stale_after_s is None
                                   else stale_after_s)
        self._record = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time()}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkdirLock:
        error = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except WorkdirLockedError as e:
                error = e
        if jax.process_count() > 1:
            ok = sharding.broadcast_from_0(int(error is None))
            if not ok and error is None:
                error = WorkdirLockedError(f"{self.path.parent} is being trained by another "
                                           "run (see process 0's error)")
        if error is not None:
            raise error
        if jax.process_index() == 0:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            found = _read(self.path)
            if found is not None and found[0] == self._record:
                self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record, f)
        return True

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                return
            found = _read(self.path)
            for _ in range(5):  # a lock created this instant may not hold its record yet
                if found is None or _is_record(found[0]) or time.time() - found[1] > 0.5:
                    break
                time.sleep(0.1)
                found = _read(self.path)
            if found is None:  # released meanwhile
                continue
            info, mtime = found
            reason = _stale_reason(info, mtime, self.stale_after_s)
            if reason is None:
                raise WorkdirLockedError(
                    f"{self.path.parent} is being trained by {_describe(info, mtime)} (lock "
                    f"{self.path}); stop that run first, or delete the lock if it is not running")
            # take over: move the stale lock aside, and check that it is the one judged stale
            aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            moved = _read(aside)
            aside.unlink(missing_ok=True)
            if moved is not None and moved[0] != info:  # a fresh lock that appeared meanwhile
                try:
                    with open(self.path, "x") as f:
                        json.dump(moved[0], f)
                except FileExistsError:
                    pass
                continue
            holder = (f"it was held by {_describe(info, mtime)}" if _is_record(info)
                      else f"{self.path} was found")
            logging.warning("taking over the lock of %s: %s, but %s", self.path.parent, holder,
                            reason)
        if not self._create():
            raise WorkdirLockedError(f"could not take the lock {self.path}: other runs keep "
                                     "taking it")

    def _beat(self) -> None:
        while not self._done.wait(self.heartbeat_s):
            found = _read(self.path)
            if found is None or found[0] != self._record:
                logging.warning("the lock %s is no longer this run's: another training took "
                                "it over", self.path)
                return
            os.utime(self.path)
