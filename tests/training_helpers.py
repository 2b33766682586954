"""Shared by the training tests: a tiny toy config and running main.py in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # configs/ is imported from the repository root, as by main.py
    sys.path.insert(0, str(ROOT))

from configs.toy_gmm import get_config as toy_gmm_config  # noqa: E402

# The suite's programs compile at XLA's CPU backend optimization level 1 instead of its default:
# the same HLO and no fast math, less LLVM work, but the machine code may round differently in
# the last bits. `.ci/run` on 2 idle cores, empty cache (2026-12-04): 8:49 -> 7:30 wall, 953 ->
# 805 user CPU-s. Every process of the suite gets it: the workers (conftest.py) and the
# main.py runs they start (subprocess_env). Benchmarks and users compile at XLA's default, and so
# does test_evaluation_multihost.py, whose processes compare adaptive-ODE bits/dim to 1e-5: at
# level 1 its one- and two-device programs rounded differently (2 of 40 values 1e-3 apart).
TEST_XLA_FLAG = "--xla_backend_optimization_level=1"


def with_test_xla_flag(flags: str) -> str:
    """``flags`` (an XLA_FLAGS value) plus the suite's compile level unless it sets one."""
    return flags if "--xla_backend_optimization_level" in flags else f"{flags} {TEST_XLA_FLAG}".strip()


# Overrides that make configs/toy_gmm.py tiny (same keys on the command line and in-process).
TINY = {
    "model.nf": 32, "model.num_layers": 1, "training.batch_size": 64, "training.n_iters": 20,
    "training.log_freq": 5, "training.eval_freq": 1000, "training.snapshot_freq": 10,
    "training.snapshot_freq_for_preemption": 5, "training.snapshot_sampling": False,
    "optim.warmup": 5, "data.prefetch": 0, "data.dataset": "CHECKERBOARD",  # numpy-sampled
}


def tiny_toy_config(**overrides):
    """configs/toy_gmm.py with TINY and ``overrides`` ({'training.n_iters': 5, ...}); the data
    are the 2-D checkerboard unless ``'data.dataset': 'GMM'``."""
    config = toy_gmm_config()
    for key, value in {**TINY, **overrides}.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def cli_overrides(**overrides) -> list[str]:
    return [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def subprocess_env(test_compile_level: bool = True, **extra: str) -> dict[str, str]:
    """The test environment (8 CPU devices, the suite's compile level) plus a compilation cache
    shared by the runs; ``extra`` overrides (an XLA_FLAGS given keeps the compile level).
    ``test_compile_level=False``: XLA's default level, as users compile (for processes whose
    results are compared to the last float32 bit with each other only)."""
    env = dict(os.environ)
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
                "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""), **extra})
    flags = env["XLA_FLAGS"].replace(TEST_XLA_FLAG, "").strip()
    env["XLA_FLAGS"] = with_test_xla_flag(flags) if test_compile_level else flags
    return env


def main_cmd(workdir, mode: str = "train", config: str = "configs/toy_gmm.py",
             from_root: bool = False, **overrides) -> list[str]:
    """main.py's command line; ``from_root``: as typed in the repository root (relative
    main.py and config paths), else absolute ones (for any current directory)."""
    where = Path() if from_root else ROOT
    return [sys.executable, str(where / "main.py"), f"--config={where / config}",
            f"--workdir={workdir}", f"--mode={mode}", *cli_overrides(**overrides)]


def run_main(workdir, *extra_args: str, env=None, timeout: float = 240, cwd=ROOT, **overrides):
    """Run main.py to completion (from ``cwd``); returns the CompletedProcess (text output)."""
    return subprocess.run([*main_cmd(workdir, from_root=cwd == ROOT, **overrides), *extra_args],
                          cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def normal(seed: int, shape, dtype=np.float32) -> jax.Array:
    """Standard normal test inputs drawn by NumPy: an eager ``jax.random.normal`` compiles a
    program for every new shape (~0.15-0.2 s each on CPU, its threefry loop)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def uniform(seed: int, shape, dtype=np.float32) -> jax.Array:
    """Uniform [0, 1) test inputs drawn by NumPy (as :func:`normal`)."""
    return jnp.asarray(np.random.default_rng(seed).random(shape).astype(dtype))


def max_abs_diff(a, b) -> float:
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                   a, b)
    return max(jax.tree_util.tree_leaves(diffs))


def damage_array_bytes(checkpoint: Path, hit=None) -> Path:
    """Damage a checkpoint as a failing disk or a bad copy does, keeping every file's size: four
    bytes of one of its array data files (``<step>/state/.../d/*``: zstd-compressed
    chunks whose literals are stored as they are) become a float32 NaN. orbax restores such a
    checkpoint without complaint; only the checksums see it. Which file and place hold which
    array depends on the order orbax's threads wrote them in (the arrays are spread over one or
    more files): the files, largest first, and places in each are tried in turn (the file
    restored in between) until ``hit()`` says the damage is the one wanted. Returns the file."""
    files = sorted((p for p in (Path(checkpoint) / "state").rglob("*")
                    if p.is_file() and p.parent.name == "d"), key=lambda p: -p.stat().st_size)
    for data in files:
        original = data.read_bytes()
        for fraction in (0.25, 0.5, 0.75, 0.125, 0.375, 0.625, 0.875, 0.0625, 0.3125, 0.5625,
                         0.8125):
            raw = bytearray(original)
            at = int(len(raw) * fraction)
            raw[at:at + 4] = np.float32(np.nan).tobytes()
            data.write_bytes(bytes(raw))
            if hit is None or hit():
                return data
        data.write_bytes(original)
    raise AssertionError(f"no place in the files of {checkpoint}/state damages the checkpoint as wanted")
