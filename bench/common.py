"""Shared helpers of the bench/ scripts: timing, the small conv-net score model, the data, tables.

Timing: :func:`best_time` runs a function once to warm up (compile), then ``repeats`` times,
blocking on every output (``jax.block_until_ready``), and returns the fastest wall time: the
least disturbed by other processes on a shared machine.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from score_sde_jax import sde_lib  # noqa: E402
from score_sde_jax.cli import load_config  # noqa: E402
from score_sde_jax.models import utils as mutils  # noqa: E402

TINY_CONFIG = "configs/tiny/tiny_ddpmpp.py"


def timed(fn: Callable, *args) -> tuple[float, object]:
    """(wall seconds, output) of one call, blocking until the output is computed."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def best_time(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> tuple[float, object]:
    """(fastest of ``repeats`` timed calls after ``warmup`` untimed ones, last output)."""
    out = None
    for _ in range(warmup):
        out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        seconds, out = timed(fn, *args)
        times.append(seconds)
    return min(times), out


def machine() -> str:
    """One line: date, CPU / accelerator, core count, jax version."""
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return (f"{datetime.date.today().isoformat()}, {dev.platform} ({dev.device_kind}), {cpu}, "
            f"{os.cpu_count()} cores, jax {jax.__version__}")


def tiny_conv_model(sde_name: str = "vpsde", init_scale: float = 1.0, num_scales: int | None = None,
                    config_path: str = TINY_CONFIG):
    """The tiny DDPM++ of ``configs/tiny/tiny_ddpmpp.py`` (16×16×1, ~190 k parameters), untrained
    (or the tiny network of ``config_path``, e.g. ``configs/tiny/tiny_ncsnpp.py`` with "vesde").

    ``model.init_scale`` = 1 instead of the config's 0 so the network's output is not ~0 at
    initialization (a zero output would make every ODE trivially easy). Returns
    ``(config, sde, eps, variables, score(variables, x, t))``; ``score`` takes the parameters as
    an argument so jitted callers do not bake them in as constants. ``num_scales``: the SDE's N.
    """
    config = load_config(os.path.join(ROOT, config_path))
    config.training.sde = sde_name
    if num_scales is not None:
        config.model.num_scales = num_scales
    config.model.init_scale = init_scale
    variables = mutils.init_model(jax.random.PRNGKey(0), config)
    sde, eps = sde_lib.get_sde(config)
    return config, sde, eps, variables, conv_score(config, sde)


def conv_score(config, sde, dtype: str | None = None):
    """``score(variables, x, t)`` of ``config``'s network (parameters as an argument), computing
    in ``dtype`` (default: ``config.model.dtype``); "float64" needs ``jax.enable_x64(True)``
    around its calls, with the variables cast by :func:`to64`."""
    if dtype is not None:
        config = config.copy_and_resolve_references()
        config.model.dtype = dtype
    model = mutils.get_model(config)

    def score(variables, x, t):
        return mutils.get_score_fn(sde, model, variables, continuous=True)(x, t)

    return score


def pf_drift(sde, score):
    """``drift(params, x, t)``: the probability-flow ODE's f̃ = f − ½ g² s for ``score(params, x, t)``."""

    def drift(params, x, t):
        return sde.reverse(lambda y, s: score(params, y, s), probability_flow=True).sde(x, t)[0]

    return drift


def digits(split: str = "test", size: int = 16, centered: bool = True) -> jax.Array:
    """scikit-learn digits (first 1500 train, last 297 test), resized to size×size×1, in [−1, 1]
    (``centered``) or [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    images = images[:1500] if split == "train" else images[1500:]
    x = jax.image.resize(jnp.asarray(images)[..., None], (len(images), size, size, 1), "bilinear")
    x = jnp.clip(x, 0.0, 1.0)
    return 2.0 * x - 1.0 if centered else x


def train_tiny(sde, variables, score, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0):
    """``steps`` Adam steps of the continuous DSM loss on the digits train split (a briefly trained
    model: smooth in t, unlike a random one). Returns the trained variables."""
    import optax

    from score_sde_jax import losses

    data = digits("train")
    loss_fn = losses.get_sde_loss_fn(sde, reduce_mean=True, likelihood_weighting=False)
    opt = optax.adam(lr)

    @jax.jit
    def step(variables, opt_state, rng):
        rng_idx, rng_loss = jax.random.split(rng)
        x = data[jax.random.randint(rng_idx, (batch,), 0, data.shape[0])]
        grads = jax.grad(lambda v: loss_fn(rng_loss, lambda y, t: score(v, y, t), x))(variables)
        updates, opt_state = opt.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    opt_state = opt.init(variables)
    for key in jax.random.split(jax.random.PRNGKey(seed), steps):
        variables, opt_state = step(variables, opt_state, key)
    return variables


def to64(tree):
    """Every floating-point array of ``tree`` cast to float64 (use under ``jax.enable_x64(True)``)."""
    def cast(a):
        return jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


def at_error(errors: Sequence[float], values: Sequence[float], target: float) -> float:
    """``values`` at error ``target``: log(value) interpolated linearly in log(error) between the
    points (errors[i], values[i]) of a tolerance sweep; nan outside the measured errors (no
    extrapolation), except within 5 % of the nearest end (the same step sequence can give an
    error that differs in the last digits), where that end's value is returned."""
    e, v = np.log(np.asarray(errors, float)), np.log(np.asarray(values, float))
    order = np.argsort(e)
    if not e.min() - np.log(1.05) <= np.log(target) <= e.max() + np.log(1.05):
        return float("nan")
    return float(np.exp(np.interp(np.log(target), e[order], v[order])))


def equal_error_rows(name: str, sweeps: dict[str, Sequence[tuple[float, float, float]]],
                     baseline: str) -> list[list[str]]:
    """Time at equal error against ``baseline``: ``sweeps[method]`` = [(error, seconds, NFE), ...]
    over a tolerance sweep. One row per point of the baseline: its error, milliseconds and NFE,
    then for every other method the milliseconds and NFE it needs for that error (:func:`at_error`) and
    the speed-up, baseline seconds / those seconds ("-" where the error is outside its sweep)."""
    rows = []
    for err, seconds, nfe in sweeps[baseline]:
        row = [name, f"{err:.2e}", f"{seconds * 1e3:.4g}", f"{nfe:.0f}"]
        for method, points in sweeps.items():
            if method == baseline:
                continue
            errs, times, nfes = zip(*points, strict=True)
            t, n = at_error(errs, times, err), at_error(errs, nfes, err)
            row += ["-", "-", "-"] if np.isnan(t) else [f"{t * 1e3:.4g}", f"{n:.0f}", f"{seconds / t:.2f}"]
        rows.append(row)
    return rows


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence], notes: Sequence[str] = ()):
    """Print one right-aligned text table (first column left-aligned) with a title and notes."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        pairs = enumerate(zip(r, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    print(title)
    print(line(cells[0]))
    print("-" * len(line(cells[0])))
    for r in cells[1:]:
        print(line(r))
    for note in notes:
        print(note)
