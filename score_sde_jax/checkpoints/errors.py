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
