"""Shared test set-up: 8 host devices for multi-device tests, deterministic CPU runs."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run one test in float64 without leaking the flag into other tests of the worker."""
    with jax.enable_x64(True):
        yield
