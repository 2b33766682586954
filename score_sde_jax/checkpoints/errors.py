"""The errors of :mod:`score_sde_jax.checkpoints`: each message names the checkpoint's path."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names its path."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No (complete) checkpoint where one was asked for."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint (this package's or an official one) does not fit the network built from the
    config: the message names the first key or shape that differs."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint's files cannot be read."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint cannot be written (a full disk, a quota, an I/O error): an OSError with the
    real errno; the message names the step, the folder and the space left there."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.errno, self.strerror = code, message

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.strerror}"
