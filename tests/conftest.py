"""Shared test set-up: 8 host devices for multi-device tests, deterministic CPU runs. The test
processes and the main.py processes they start share one persistent compilation cache,
``.pytest_cache/jax_compilation_cache`` (or ``$SCORE_SDE_JAX_CACHE``; ``off`` turns it off), not
the user's ``~/.cache``: a program that the other worker or a subprocess compiled already is
loaded, and a repeated run of the suite loads its steps instead of compiling them. The workers
store every program, not only those over ``setup_compilation_cache``'s 0.5 s: ~3,100 of each
worker's ~3,250 compilations are shorter, many of them the same small programs in both workers
(the whole suite, empty cache: 1,230 -> 1,162 CPU-s, 2026-12-04). Every program compiles at
``training_helpers.TEST_XLA_FLAG``'s level."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # read when jax is imported

from training_helpers import with_test_xla_flag  # noqa: E402  (XLA reads XLA_FLAGS at first use)

os.environ["XLA_FLAGS"] = with_test_xla_flag(
    os.environ.get("XLA_FLAGS", "--xla_force_host_platform_device_count=8"))
os.environ.setdefault("SCORE_SDE_JAX_CACHE",
                      str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation_cache"))

import digits_model  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

from score_sde_jax import cli  # noqa: E402

cli.setup_compilation_cache(min_compile_secs=0)


@pytest.fixture
def x64():
    """Run one test in float64 without leaking the flag into other tests of the worker."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def trained_digits():
    """THE trained digits model of the suite (tests/digits_model.py: the embedded default in
    its label-conditional form, 600 steps as ``make demo`` trains it), read from
    tests/data/trained_digits.npz; ``test_demos_train.py`` checks that this code still trains
    that run. With the null label it is the unconditional model (test_demos_train.py), with a
    class label the conditional one (test_guidance.py). Returns (config, EMA parameters)."""
    return digits_model.load()
