"""Faults of orbax-checkpoint turned into one named error, with orbax's own noise silenced.

A failing write (a full disk, a quota, an I/O error) makes orbax log every worker thread's
exception with its traceback, and tensorstore callbacks that arrive after orbax closed its event
loop print ``RuntimeError: Event loop is closed`` tracebacks through ``sys.unraisablehook``, and
the orbax coroutines left with the same error log asyncio's "Task exception was never retrieved"
with its traceback whenever the garbage collector finds them -- hundreds of lines before the one
error that matters, which orbax re-raises on the calling thread anyway. :func:`quiet_orbax`
drops exactly these kinds of message (once per process; anything else still shows), and
:func:`save_error` turns the re-raised error into a :class:`CheckpointWriteError` (an ``OSError``
with the real errno) naming the step, the folder and the free space, after removing the
half-written ``<step>.orbax-checkpoint-tmp`` folder this save created (so that the space it held
is free again and no reader ever sees it).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import jax

from score_sde_jax.checkpoints.errors import CheckpointWriteError

_installed = False
_ORBAX = f"{os.sep}orbax{os.sep}"


class _OrbaxThreadErrors(logging.Filter):
    """Drops orbax's "<thread> raised an exception" records (re-raised on the caller's thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and _ORBAX in record.pathname
                    and "raised an exception" in record.getMessage())


def _in_orbax(tb) -> bool:
    """Whether a traceback passes through orbax's code."""
    while tb is not None:
        if _ORBAX in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _OrbaxTaskErrors(logging.Filter):
    """Drops asyncio's "Task / Future exception was never retrieved" for an orbax coroutine or
    a tensorstore future (orbax's reads and writes; a tensorstore error names its
    ``tensorstore_spec``): the duplicate of the error that orbax re-raises on the caller's
    thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        _, exc, tb = record.exc_info or (None, None, None)
        return not (record.levelno >= logging.ERROR
                    and record.getMessage().startswith(("Task exception was never retrieved",
                                                        "Future exception was never retrieved"))
                    and (_in_orbax(tb) or "[tensorstore_spec=" in str(exc)))


def _is_closed_loop_noise(unraisable) -> bool:
    """"Event loop is closed" after a failed save, or the duplicate of a read error left in an
    orbax coroutine that the failed restore abandoned (the error itself reaches the caller)."""
    value = getattr(unraisable, "exc_value", None)
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
        return True
    code = getattr(getattr(unraisable, "object", None), "cr_code", None)
    return code is not None and _ORBAX in code.co_filename


def quiet_orbax() -> None:
    """Silence orbax's duplicate thread errors, its late "Event loop is closed" tracebacks, the
    errors of the coroutines a failed restore abandons and asyncio's report of orbax tasks whose
    error was never retrieved (idempotent; every other log record and unraisable exception is
    shown as before)."""
    global _installed
    if _installed:
        return
    _installed = True
    for name in ("absl", "orbax"):
        logging.getLogger(name).addFilter(_OrbaxThreadErrors())
    logging.getLogger("asyncio").addFilter(_OrbaxTaskErrors())
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_closed_loop_noise(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook


def _errno(e: BaseException) -> int | None:
    """The OS error behind an orbax / tensorstore failure (they raise ValueError with the text
    ``... No space left on device [os_error_code='28']``), or None."""
    for cause in (e, e.__cause__, e.__context__):
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
    text = str(e)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return int(code.group(1))
    return errno.ENOSPC if "No space left on device" in text else None


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _remove_settled(folder: Path, quiet_checks: int = 3, timeout_s: float = 3.0) -> None:
    """Remove ``folder`` until it stays gone for ``quiet_checks`` checks 0.1 s apart: orbax's
    worker threads may still create files in it for a moment after the save failed."""
    deadline, quiet = time.monotonic() + timeout_s, 0
    while quiet < quiet_checks and time.monotonic() < deadline:
        quiet = quiet + 1 if not folder.exists() else 0
        shutil.rmtree(folder, ignore_errors=True)
        time.sleep(0.1)


def save_error(e: BaseException, directory: Path, step: int) -> BaseException:
    """The error to raise for a failed save of ``directory/<step>``: a CheckpointWriteError
    with the OS error's errno when there is one (else ``e`` itself). Removes the save's own
    ``<step>.orbax-checkpoint-tmp`` folder first (process 0)."""
    if jax.process_index() == 0:
        _remove_settled(directory / f"{step}.orbax-checkpoint-tmp")
    code = _errno(e)
    if code is None:
        return e
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    return CheckpointWriteError(
        code, f"{os.strerror(code)}: the checkpoint of step {step} cannot be written into "
              f"{directory} ({_size(free)} free there); make room and run the same command "
              "again: training resumes from the last complete checkpoint")
