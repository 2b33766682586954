"""Does bfloat16 train as well as float32? ``configs/digits.py`` for N steps in each dtype.

    python bench/bf16_digits.py [--steps 300] [--seed 0] [--dtypes float32,bfloat16]

Both runs start from the same initial parameters (``create_train_state`` with ``PRNGKey(seed)``;
parameters are float32 in both), see the same batches of the digits train split (first 1500
images, drawn with a numpy generator seeded by ``seed``) and the same noise keys. After training,
the held-out DSM loss (``losses.get_step_loss``, no dropout) of the raw and the EMA
parameters is averaged over the 297 test digits × ``--repeats`` noise draws with fixed keys,
each run evaluated with its own network dtype and, for bf16, also with the float32 network.
The table gives each loss and its ratio to float32's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, digits, load_config, machine, print_table  # noqa: E402
from score_sde_jax import losses, sde_lib, sharding, train_lib  # noqa: E402
from score_sde_jax.models import get_model  # noqa: E402


def config_for(dtype: str):
    config = load_config(os.path.join(ROOT, "configs/digits.py"))
    config.model.dtype = dtype
    return config


def train(config, steps: int, seed: int) -> tuple[train_lib.TrainState, float]:
    """(state after ``steps`` updates, seconds per update after the first)."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    data = np.asarray(digits("train", size=config.data.image_size, centered=False))
    order = np.random.default_rng(seed)
    state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(seed)), mesh)
    step = train_lib.compile_train_step(config, mesh)
    b = config.training.batch_size
    start = None
    for i in range(steps):
        idx = order.integers(0, len(data), b)
        batch = {"image": data[idx], "label": np.zeros(b, np.int32)}
        state, metrics = step(state, sharding.make_global_batch(batch, mesh))
        if i == 0:
            jax.block_until_ready(metrics)
            start = time.perf_counter()
    jax.block_until_ready(state)
    return jax.device_get(state), (time.perf_counter() - start) / max(steps - 1, 1)


def held_out_loss(config, params, repeats: int) -> float:
    sde, _ = sde_lib.get_sde(config)
    loss_fn = losses.get_step_loss(config, sde, get_model(config), train=False)
    x = 2.0 * digits("test", size=config.data.image_size, centered=False) - 1.0  # data scaler

    @jax.jit
    def mean_loss(params):
        keys = jax.random.split(jax.random.PRNGKey(1234), repeats)
        return jnp.mean(jax.vmap(lambda k: loss_fn(params, k, {"image": x})[0])(keys))

    return float(mean_loss(params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    rows, base = [], {}
    for dtype in args.dtypes.split(","):
        config = config_for(dtype)
        state, seconds = train(config, args.steps, args.seed)
        evals = [(dtype, config)]
        if dtype != "float32":
            evals.append(("float32", config_for("float32")))
        for eval_dtype, eval_config in evals:
            raw = held_out_loss(eval_config, state.params, args.repeats)
            ema = held_out_loss(eval_config, state.params_ema, args.repeats)
            base.setdefault("raw", raw)
            base.setdefault("ema", ema)
            rows.append([dtype, eval_dtype, args.steps, f"{raw:.4f}", f"{raw / base['raw']:.3f}",
                         f"{ema:.4f}", f"{ema / base['ema']:.3f}", f"{seconds * 1e3:.0f}"])
            print(rows[-1], flush=True)
    print()
    print_table(f"Held-out DSM loss of configs/digits.py after {args.steps} steps, seed "
                f"{args.seed} — {machine()}",
                ["trained in", "evaluated in", "steps", "loss", "vs fp32", "EMA loss",
                 "EMA vs fp32", "ms/step"], rows,
                notes=[f"297 test digits x {args.repeats} noise draws, fixed keys; same "
                       "initial parameters, batches and noise keys for every dtype"])


if __name__ == "__main__":
    main()
