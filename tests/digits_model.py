"""The suite's trained digits model: its recipe, its stored weights and the check that ties them
to this code.

The recipe is the embedded default in its label-conditional form (configs/digits_cfg.py:
configs/digits.py's DDPM++ with a class embedding of the 10 digits and the null label, label
dropout 0.1) trained as ``make demo`` trains configs/digits.py (``demos.train.digits_config``,
600 of the demo's 800 steps; 300 gave the ODE samplers saturated noise), on one device, by
``run_lib.train``. Training it took ~90 s of one test worker, the largest single cost of the
suite, so ``tests/data/make_trained_digits.py`` trains it once and stores, in
``tests/data/trained_digits.npz``:

- ``ema/<path>``: the EMA parameters after the 600 steps (what the tests sample with);
- the first :data:`CHECK_STEPS` updates of the same run, summarised per parameter leaf
  (:func:`update_summary`), which ``test_demos_train.py`` recomputes by training those steps
  with this code. The summary depends on the initialisation, the data stream, the loss, the
  optimizer and the EMA, so a change to any of them fails that test until the weights are
  made again (``PYTHONPATH=. python tests/data/make_trained_digits.py``, ~1-2 min on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from score_sde_jax import run_lib, sharding, train_lib
from score_sde_jax.demos import train as demo_train

STEPS = 600
CHECK_STEPS = 20  # the warm-up (100 steps) is under way: every update differs from the last
DATA = Path(__file__).with_name("data") / "trained_digits.npz"


def config(steps: int = STEPS):
    """The recipe's config, trained for ``steps`` updates (the first ``steps`` of the recipe:
    ``n_iters`` only ends the loop)."""
    cfg = demo_train.digits_config(STEPS, "digits_cfg")
    cfg.model.num_scales = 100  # Euler-Maruyama steps of the PC sampler
    cfg.data.prefetch = 0
    cfg.training.n_iters = steps
    return cfg


def train(workdir: str | Path, steps: int) -> tuple[train_lib.TrainState, train_lib.TrainState]:
    """(state after ``steps`` updates of the recipe, the initial state), on one device."""
    cfg = config(steps)
    state = run_lib.train(cfg, str(workdir), sharding.make_mesh(jax.devices()[:1]))
    init = train_lib.create_train_state(cfg, jax.random.PRNGKey(int(cfg.seed)))
    return jax.device_get(state), jax.device_get(init)


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def update_summary(state: train_lib.TrainState, init: train_lib.TrainState) -> dict[str, np.ndarray]:
    """Per leaf of ``params`` and ``params_ema`` (sorted paths), the change d = leaf − initial
    leaf: its norm ‖d‖ and its projection ⟨d, r⟩ / ‖r‖ on a fixed standard normal r (NumPy,
    seed 0, drawn in path order), in float64. Norm and projection catch a change of the
    updates' size and of their direction."""
    out = {}
    for name in ("params", "params_ema"):
        now, start = _flat(getattr(state, name)), _flat(getattr(init, name))
        rng = np.random.default_rng(0)
        norms, projections = [], []
        for path in sorted(now):
            d = (now[path] - start[path]).ravel()
            r = rng.standard_normal(d.size)
            norms.append(np.linalg.norm(d))
            projections.append(d @ r / np.linalg.norm(r))
        out[f"{name}_norm"], out[f"{name}_projection"] = np.array(norms), np.array(projections)
    out["step"] = np.asarray(state.step)
    return out


def load():
    """(config, EMA parameters after :data:`STEPS` updates) from :data:`DATA`."""
    with np.load(DATA) as f:
        ema = {k.removeprefix("ema/"): f[k] for k in f.files if k.startswith("ema/")}
    return config(), traverse_util.unflatten_dict(ema, sep="/")


def stored_summary() -> dict[str, np.ndarray]:
    """The :func:`update_summary` of the stored run's first :data:`CHECK_STEPS` updates."""
    with np.load(DATA) as f:
        return {k.removeprefix("check/"): f[k] for k in f.files if k.startswith("check/")}
