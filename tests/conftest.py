"""Shared test set-up: 8 host devices for multi-device tests, deterministic CPU runs. The
main.py processes the tests start use the persistent compilation cache in
``.pytest_cache/jax_compilation_cache`` (or ``$SCORE_SDE_JAX_CACHE``; ``off`` turns it off), not
the user's ``~/.cache``: a repeated run of the suite loads their steps instead of compiling them."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("SCORE_SDE_JAX_CACHE",
                      str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation_cache"))

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run one test in float64 without leaking the flag into other tests of the worker."""
    with jax.enable_x64(True):
        yield
