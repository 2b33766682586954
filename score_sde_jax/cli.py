"""What every command-line entry point shares: one-line errors, loading a config file and the
persistent compilation cache.

``run_cli(prog, fn)`` runs ``fn()`` and turns an expected failure (bad input: a missing or
unreadable file, a bad config value, a checkpoint that does not fit) into one line on stderr,
``{prog}: error: {Type}: {message}``, and exit status 1. With the environment variable
``SCORE_SDE_JAX_TRACEBACK=1`` the exception propagates with its traceback instead.

``setup_compilation_cache(directory)`` turns on JAX's persistent compilation cache: compiled
XLA programs are written under ``directory`` (default ``$SCORE_SDE_JAX_CACHE`` or
``~/.cache/score_sde_jax/jax``) and a later process compiling the same program (same code,
shapes, flags and JAX version) loads it instead of compiling again -- a resumed run, ``--mode
sample`` or ``--mode eval`` of a trained config skips most of its compile time.
``SCORE_SDE_JAX_CACHE=off`` (or ``main.py --nocompilation_cache``) turns it off.

``keep_freed_host_memory()`` makes glibc's allocator keep and reuse freed memory (see there);
``main.py --nokeep_host_memory`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

TRACEBACK_ENV = "SCORE_SDE_JAX_TRACEBACK"
CACHE_ENV = "SCORE_SDE_JAX_CACHE"
_OFF = ("", "0", "off", "none", "false", "no")

class NotEnoughSpaceError(OSError):
    """A run's output would not fit the free space of its disk (refused before any work)."""


# Failures caused by the user's input, reported in one line; anything else is a bug and keeps
# its traceback. Most exceptions of this package derive from these (DatasetNotPreparedError is a
# FileNotFoundError); a CLI adds its own (checkpoints.CheckpointError) with ``expected``.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, AttributeError, FileNotFoundError, IsADirectoryError,
    NotADirectoryError, PermissionError, ImportError, SyntaxError, zipfile.BadZipFile,
    NotEnoughSpaceError)

T = TypeVar("T")


def one_line(message: object) -> str:
    """``message`` with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(message).split())


def die(prog: str, message: object) -> NoReturn:
    """Print ``{prog}: error: {message}`` (one line) on stderr and exit with status 1."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    sys.exit(1)


def run_cli(prog: str, fn: Callable[[], T], expected: tuple[type[BaseException], ...] = (),
            interrupted: str = "interrupted") -> T:
    """``fn()``; an exception of ``EXPECTED_ERRORS + expected`` becomes a one-line error (see
    the module docstring), Ctrl-C the line ``{prog}: {interrupted}`` and exit status 130."""
    try:
        if os.environ.get(TRACEBACK_ENV, "") not in _OFF:
            return fn()
        try:
            return fn()
        except (*EXPECTED_ERRORS, *expected) as e:
            die(prog, f"{type(e).__name__}: {e} ({TRACEBACK_ENV}=1 shows the traceback)")
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        sys.exit(130)


def load_config(path: str):
    """``get_config()`` of a config file; the folder above its ``configs/`` goes on sys.path
    (so that a config can import its defaults, as ``main.py --config`` allows)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    parts = path.split(os.sep)
    if "configs" in parts:
        root = os.sep.join(parts[: len(parts) - 1 - parts[::-1].index("configs")])
        if root not in sys.path:
            sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location("_loaded_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config()")
    return module.get_config()


def check_run_dirs(workdir: str, output: str, flag: str = "--workdir") -> None:
    """Refuse, before any work, a run whose folders cannot be used: an empty ``workdir`` (it
    would mean the current folder), a ``workdir`` that is an existing file, and an ``output``
    folder (the work directory itself when training) that is, or lies under, a file, or whose
    nearest existing folder is not writable (a read-only folder or file system)."""
    if not str(workdir).strip():
        raise ValueError(f"{flag}={workdir!r} is empty; name a work directory (an empty path "
                         "would mean the current folder)")
    if Path(workdir).expanduser().is_file():
        raise NotADirectoryError(f"{flag}={workdir} is an existing file, not a work directory")
    target = Path(output).expanduser()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot write into {output}: {existing} is a file, not a folder")
    try:  # a real probe: os.access misses read-only mounts and special file systems for root
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        why = "" if e.errno == errno.ENOENT or not e.strerror else f" ({e.strerror})"
        raise PermissionError(f"cannot write into {output}: {existing} is not "
                              f"writable{why}") from e


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def check_free_space(output: str | os.PathLike, needed: int, what: str, hint: str = "") -> None:
    """NotEnoughSpaceError (errno ENOSPC) when ``needed`` bytes (``what``) exceed the free space
    of the disk of ``output`` (``shutil.disk_usage`` of its nearest existing folder)."""
    target = Path(output).expanduser().absolute()
    existing = next((p for p in (target, *target.parents) if p.is_dir()), Path(target.anchor))
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise NotEnoughSpaceError(errno.ENOSPC, f"No space left on device: {what} need about "
                                  f"{_size(needed)} in {output}, but {existing} has "
                                  f"{_size(free)} free{hint}")


def default_cache_dir() -> Path | None:
    """``$SCORE_SDE_JAX_CACHE`` (None when it says off), else ``~/.cache/score_sde_jax/jax``
    (``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "score_sde_jax" / "jax"


def setup_compilation_cache(directory: str | os.PathLike | None = None,
                            min_compile_secs: float = 0.5) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (default
    :func:`default_cache_dir`; None there leaves it off). Programs that compile in less than
    ``min_compile_secs`` are not stored. Call once, before the first compilation. Returns the
    directory in use (None when off or when it cannot be created)."""
    path = Path(directory).expanduser() if directory is not None else default_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        logging.warning("compilation cache off: cannot create %s (%s)", path, e)
        return None
    import jax  # here, not at the top: main.py reports a bad flag without loading JAX

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_host_memory() -> bool:
    """Make the temporaries of each CPU execution reuse the memory of the last one: glibc's
    malloc serves large blocks from the heap rather than from their own ``mmap`` and never
    trims the heap (``mallopt``; the process keeps its peak host memory), and JAX runs a
    single-device CPU computation on the calling thread (``jax_cpu_enable_async_dispatch``
    off), whose allocations come from that heap. Call before JAX's CPU backend starts. Returns
    False (and changes nothing) where the C library is not glibc.

    XLA:CPU allocates the temporaries of each execution afresh: for the CIFAR-10 DDPM++ train
    step one ~1 GB block. Allocated on a JAX worker thread, whose glibc arena cannot hold a
    block beyond 64 MB, it is mapped with ``mmap`` and unmapped after the step, so every step
    page-faults it in again: 262 k page faults and 0.3-0.4 s of kernel time a step, 3.68 s
    against 3.20 s a step once the block is reused (one core, BENCHMARKS.md section 10).
    The ``MALLOC_*`` environment variables cannot reach that path; one arena for all threads
    (``M_ARENA_MAX`` 1) can, but slows XLA's multi-threaded compilation by 5-10 s."""
    path = ctypes.util.find_library("c")
    if not path:
        return False
    try:
        libc = ctypes.CDLL(path)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # only glibc has it
    except (OSError, AttributeError):
        return False
    if not libc.gnu_get_libc_version():
        return False
    if not all(libc.mallopt(param, value) == 1
               for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))):
        return False
    import jax  # here, not at the top: main.py reports a bad flag without loading JAX

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
