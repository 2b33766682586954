"""Train the embedded defaults for real and show that they learned (``make demo``).

    python -m score_sde_jax.demo_train --workdir runs/demo [--toy_steps 600] [--digits_steps 300]

1. configs/toy_gmm.py: the MLP on the 2-D Gaussian mixture. The untrained and the trained
   network's Euler-Maruyama samples are scored by the exact mixture log-density and by their
   sliced Wasserstein distance to true samples (true-vs-true distance printed as the floor).
2. configs/digits.py: DDPM++ on scikit-learn's 8x8 digits (no download); sliced Wasserstein
   distance of samples to test digits in pixel space, and a PNG grid of the samples.

Both are trained by ``run_lib.train`` (checkpoints, TensorBoard logs, metrics.jsonl under
``workdir/toy`` and ``workdir/digits``; a second run resumes). The DSM loss is measured on one
fixed held-out batch with fixed noise, for the untrained and the trained weights.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from score_sde_jax import analytic, cli, datasets, logging_utils, run_lib, sampling, sde_lib, train_lib
from score_sde_jax.models import utils as mutils

ROOT = Path(__file__).resolve().parents[1]


def _config(name: str, steps: int, snapshots: int):
    """``configs/{name}.py`` shortened to ``steps`` updates with ``snapshots`` checkpoints (and
    evaluations), 10 log lines and no snapshot sampling."""
    from score_sde_jax.convert import load_config

    config = load_config(str(ROOT / "configs" / f"{name}.py"))
    t = config.training
    t.n_iters, t.log_freq, t.eval_freq = steps, max(steps // 10, 1), max(steps // snapshots, 1)
    t.snapshot_freq = t.snapshot_freq_for_preemption = max(steps // snapshots, 1)
    t.snapshot_sampling = False
    return config


class _Judge:
    """DSM loss on a fixed batch and samples from given parameters, for one config."""

    def __init__(self, config, n_samples: int):
        self.config = config
        self.sde, eps = sde_lib.get_sde(config)
        model = mutils.get_model(config)
        loss = train_lib.get_step_loss(config, self.sde, model, train=False)
        scaler = datasets.get_data_scaler(config)
        self._loss = jax.jit(lambda p, x: loss(p, jax.random.PRNGKey(8), {"image": scaler(x)})[0])
        sampler = sampling.get_sampling_fn(config, self.sde, (n_samples, *mutils.data_shape(config)),
                                           eps)
        continuous = bool(config.training.continuous)
        inverse = datasets.get_data_inverse_scaler(config)
        self._draw = jax.jit(lambda p: inverse(sampler(jax.random.PRNGKey(1), mutils.get_score_fn(
            self.sde, model, {"params": p}, continuous=continuous))[0]))

    def loss(self, params, x) -> float:
        return float(self._loss(params, x))

    def samples(self, params) -> np.ndarray:
        return np.asarray(self._draw(params))


def _train(config, workdir: Path):
    untrained = train_lib.create_train_state(config, jax.random.PRNGKey(int(config.seed)))
    start = time.perf_counter()
    trained = jax.device_get(run_lib.train(config, str(workdir)))
    return untrained, trained, time.perf_counter() - start


def _report(seconds: float, rows: list[tuple[str, str, str]], samples: np.ndarray, workdir: Path,
            title: str) -> None:
    """Print the training time and the untrained / trained table; save the trained samples."""
    print(f"  trained in {seconds:.0f} s")
    print(f"  {'':44s} {'untrained':>11s} {'trained':>9s}")
    for name, a, b in rows:
        print(f"  {name:44s} {a:>11s} {b:>9s}")
    print(f"  samples: {logging_utils.save_samples(samples, workdir / 'demo_samples', title)}")


def toy(workdir: Path, steps: int, n: int = 1000) -> dict[str, float]:
    from score_sde_jax.data.toy import gaussian_mixture_from_config

    config = _config("toy_gmm", steps, snapshots=4)
    config.model.ema_rate = 0.99  # the paper's 0.999 averages over more steps than a demo runs
    config.model.num_scales = 500  # Euler-Maruyama steps of the sampler
    print(f"\n== 2-D Gaussian mixture, MLP score network, VP SDE: {steps} steps "
          f"(batch {config.training.batch_size}) in {workdir}")
    untrained, trained, seconds = _train(config, workdir)
    gmm = gaussian_mixture_from_config(config.data)
    judge = _Judge(config, n)
    held_out = np.asarray(gmm.sample(jax.random.PRNGKey(7), 4096))
    ref, other = (gmm.sample(jax.random.PRNGKey(k), n) for k in (5, 6))
    key = jax.random.PRNGKey(2)
    x0, x1 = judge.samples(untrained.params_ema), judge.samples(trained.params_ema)
    res = {"loss_untrained": judge.loss(untrained.params, held_out),
           "loss_trained": judge.loss(trained.params, held_out),
           "loglik_untrained": float(jnp.mean(gmm.log_prob(x0))),
           "loglik_trained": float(jnp.mean(gmm.log_prob(x1))),
           "loglik_truth": float(jnp.mean(gmm.log_prob(ref))),
           "sw_untrained": float(analytic.sliced_wasserstein(key, x0, ref)),
           "sw_trained": float(analytic.sliced_wasserstein(key, x1, ref)),
           "sw_floor": float(analytic.sliced_wasserstein(key, other, ref))}
    _report(seconds, [
        ("DSM loss (held-out batch)", f"{res['loss_untrained']:.4f}", f"{res['loss_trained']:.4f}"),
        (f"mean exact log p of samples [truth {res['loglik_truth']:.2f}]",
         f"{res['loglik_untrained']:.4g}", f"{res['loglik_trained']:.3f}"),
        (f"sliced W2 to data [floor {res['sw_floor']:.3f}]", f"{res['sw_untrained']:.3f}",
         f"{res['sw_trained']:.3f}")], x1, workdir, f"trained, {steps} steps")
    return res


def digits(workdir: Path, steps: int, n: int = 100) -> dict[str, float]:
    config = _config("digits", steps, snapshots=3)
    config.model.num_scales = 250  # Euler-Maruyama steps of the sampler (paper: 1000)
    print(f"\n== 8x8 digits (scikit-learn), DDPM++ (0.75M parameters), VP SDE: {steps} steps "
          f"(batch {config.training.batch_size}) in {workdir}")
    untrained, trained, seconds = _train(config, workdir)
    test = np.concatenate([b["image"] for b in datasets.get_dataset(config, "test", evaluation=True,
                                                                     shard=(0, 1))])
    floor_config = copy.deepcopy(config)
    floor_config.training.batch_size = n
    train_x = next(datasets.get_dataset(floor_config, "train", shard=(0, 1), seed=3))["image"]
    judge = _Judge(config, n)
    key = jax.random.PRNGKey(2)
    x0 = np.clip(judge.samples(untrained.params_ema), 0, 1)
    x1 = np.clip(judge.samples(trained.params_ema), 0, 1)
    sw = lambda x, y: float(analytic.sliced_wasserstein(key, jnp.asarray(x[:n]), jnp.asarray(y[:n])))  # noqa: E731
    res = {"loss_untrained": judge.loss(untrained.params, test[:256]),
           "loss_trained": judge.loss(trained.params, test[:256]),
           "sw_untrained": sw(x0, test), "sw_trained": sw(x1, test),
           "sw_floor": sw(train_x, test)}
    _report(seconds, [
        ("DSM loss (256 test digits)", f"{res['loss_untrained']:.4f}", f"{res['loss_trained']:.4f}"),
        (f"sliced W2 to test digits [floor {res['sw_floor']:.3f}]", f"{res['sw_untrained']:.3f}",
         f"{res['sw_trained']:.3f}")], x1, workdir, "digits")
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--toy_steps", type=int, default=600)
    parser.add_argument("--digits_steps", type=int, default=300, help="0 skips the digits")
    args = parser.parse_args(argv)
    logging_utils.setup_logging(int(os.environ.get("SCORE_SDE_JAX_DEMO_LOGLEVEL", 30)))
    cli.setup_compilation_cache()  # a second `make demo` skips most compiling
    workdir = Path(args.workdir)
    print(f"JAX {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
    if args.toy_steps > 0:
        toy(workdir / "toy", args.toy_steps)
    if args.digits_steps > 0:
        digits(workdir / "digits", args.digits_steps)


if __name__ == "__main__":
    main()
