"""Train the embedded defaults for real and show that they learned (``make demo``).

    python -m score_sde_jax.demos.train --workdir runs/demo [--toy_steps 600] [--digits_steps 800]

1. configs/toy_gmm.py: the MLP on the 2-D Gaussian mixture. The untrained and the trained
   network's Euler-Maruyama samples are scored by the exact mixture log-density and by their
   sliced Wasserstein distance to true samples (true-vs-true distance printed as the floor).
2. configs/digits.py: DDPM++ on scikit-learn's 8x8 digits (no download); sliced Wasserstein
   distance of samples to test digits in pixel space, and a PNG grid of the samples, for the
   config's PC sampler and for each ``--config.sampling.method`` the README suggests (ode, heun,
   dpm_solver). Those deterministic samplers integrate the probability-flow ODE from
   σ̃ = std/m ≈ 150 at t = T, where a per-pixel bias b of the network's noise prediction moves
   the data prediction by σ̃ b: after 300 steps (b ≈ 0.03) they gave saturated noise, after 600
   (b ≈ 0.01) digits; the PC sampler's noise forgets such errors.

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

from score_sde_jax import (
    analytic,
    cli,
    datasets,
    files,
    logging_utils,
    losses,
    run_lib,
    sampling,
    sde_lib,
    train_lib,
)
from score_sde_jax.data.toy import gaussian_mixture_from_config
from score_sde_jax.models import utils as mutils

ROOT = Path(__file__).resolve().parents[2]
DIGITS_STEPS = 800  # enough for the ODE samplers too (300 gave saturated noise: README)


def _config(name: str, steps: int, snapshots: int):
    """``configs/{name}.py`` shortened to ``steps`` updates with ``snapshots`` checkpoints (and
    evaluations), 10 log lines and no snapshot sampling."""
    config = cli.load_config(str(ROOT / "configs" / f"{name}.py"))
    t = config.training
    t.n_iters, t.log_freq, t.eval_freq = steps, max(steps // 10, 1), max(steps // snapshots, 1)
    t.snapshot_freq = t.snapshot_freq_for_preemption = max(steps // snapshots, 1)
    t.snapshot_sampling = False
    return config


# The samplers the README suggests for the digits workdir (config.sampling overrides), in the
# order the demo prints them; "pc" is the config's own (Euler-Maruyama, no corrector).
DIGITS_SAMPLERS: dict[str, dict] = {
    "pc": {},
    "ode": {"method": "ode"},
    "heun": {"method": "heun"},
    "dpm_solver": {"method": "dpm_solver"},
}


class Judge:
    """DSM loss on a fixed batch and samples from given parameters, for one config and for each
    ``samplers`` entry (name: ``config.sampling`` overrides, {} for the config's own sampler)."""

    def __init__(self, config, n_samples: int, samplers: dict[str, dict] | None = None):
        self.config = config
        self.sde, eps = sde_lib.get_sde(config)
        model = mutils.get_model(config)
        loss = losses.get_step_loss(config, self.sde, model, train=False)
        scaler = datasets.get_data_scaler(config)
        self._loss = jax.jit(lambda p, x: loss(p, jax.random.PRNGKey(8), {"image": scaler(x)})[0])
        continuous = bool(config.training.continuous)
        inverse = datasets.get_data_inverse_scaler(config)
        shape = (n_samples, *mutils.data_shape(config))
        self._draw = {}
        for name, overrides in (samplers or {"": {}}).items():
            c = copy.deepcopy(config)
            c.sampling.update(overrides)
            sampler = sampling.get_sampling_fn(c, self.sde, shape, eps)
            self._draw[name] = _draw_fn(sampler, self.sde, model, continuous, inverse)

    @property
    def samplers(self) -> list[str]:
        return list(self._draw)

    def loss(self, params, x) -> float:
        return float(self._loss(params, x))

    def samples(self, params, sampler: str = "") -> np.ndarray:
        return np.asarray(self._draw[sampler](params)[0])

    def samples_nfe(self, params, sampler: str) -> tuple[np.ndarray, int]:
        """Samples in data space and the number of score evaluations they took."""
        x, nfe = self._draw[sampler](params)
        return np.asarray(x), int(nfe)


def _draw_fn(sampler, sde, model, continuous: bool, inverse):
    """jit(params -> (samples in data space, NFE)), always from the same random key."""

    def draw(params):
        score_fn = mutils.get_score_fn(sde, model, {"params": params}, continuous=continuous)
        x, nfe = sampler(jax.random.PRNGKey(1), score_fn)
        return inverse(x), nfe

    return jax.jit(draw)


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
    paths = files.write_samples(workdir / "demo_samples" / "sample", samples, title)
    print(f"  samples: {paths['png'] or paths['npz']}")


def toy(workdir: Path, steps: int, n: int = 1000) -> dict[str, float]:
    config = _config("toy_gmm", steps, snapshots=4)
    config.model.ema_rate = 0.99  # the paper's 0.999 averages over more steps than a demo runs
    config.model.num_scales = 500  # Euler-Maruyama steps of the sampler
    print(f"\n== 2-D Gaussian mixture, MLP score network, VP SDE: {steps} steps "
          f"(batch {config.training.batch_size}) in {workdir}")
    untrained, trained, seconds = _train(config, workdir)
    gmm = gaussian_mixture_from_config(config.data)
    judge = Judge(config, n)
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


def digits_config(steps: int, name: str = "digits"):
    """configs/{name}.py (digits.py, or digits_cfg.py: its label-conditional form) as the demo
    trains it: ``steps`` updates, 3 snapshots, and 250 Euler-Maruyama steps for the PC sampler
    (paper: 1000)."""
    config = _config(name, steps, snapshots=3)
    config.model.num_scales = 250
    return config


def held_out_digits(config) -> np.ndarray:
    """The test split of the digits in data space [0, 1]: (N, 8, 8, 1)."""
    return np.concatenate([b["image"] for b in datasets.get_dataset(config, "test", evaluation=True,
                                                                     shard=(0, 1))])


def sliced_w2(x: np.ndarray, y: np.ndarray, n: int) -> float:
    """Sliced W2 between the first ``n`` of x and of y, on one fixed set of projections."""
    return float(analytic.sliced_wasserstein(jax.random.PRNGKey(2), jnp.asarray(x[:n]),
                                             jnp.asarray(y[:n])))


def sampler_distances(judge: Judge, params, test: np.ndarray, n: int) -> dict[str, tuple]:
    """For every sampler of ``judge``: (sliced W2 of n samples, clipped to [0, 1], to the test
    digits; NFE; the samples in data space, not clipped)."""
    out = {}
    for name in judge.samplers:
        x, nfe = judge.samples_nfe(params, name)
        out[name] = (sliced_w2(np.clip(x, 0, 1), test, n), nfe, x)
    return out


def _describe(config, name: str) -> str:
    s = config.sampling
    return {"pc": f"{s.predictor}, corrector {s.corrector}",
            "ode": f"{s.solver}, rtol {s.rtol:g}, atol {s.atol:g}",
            "heun": f"EDM, {s.num_steps} steps",
            "dpm_solver": f"++ order {s.order}, {s.num_steps} steps"}.get(name, "")


def digits(workdir: Path, steps: int, n: int = 100) -> dict[str, float]:
    config = digits_config(steps)
    print(f"\n== 8x8 digits (scikit-learn), DDPM++ (0.75M parameters), VP SDE: {steps} steps "
          f"(batch {config.training.batch_size}) in {workdir}")
    untrained, trained, seconds = _train(config, workdir)
    test = held_out_digits(config)
    floor_config = copy.deepcopy(config)
    floor_config.training.batch_size = n
    train_x = next(datasets.get_dataset(floor_config, "train", shard=(0, 1), seed=3))["image"]
    judge = Judge(config, n, DIGITS_SAMPLERS)
    x0 = np.clip(judge.samples(untrained.params_ema, "pc"), 0, 1)
    start = time.perf_counter()
    by_sampler = sampler_distances(judge, trained.params_ema, test, n)
    sample_seconds = time.perf_counter() - start
    res = {"loss_untrained": judge.loss(untrained.params, test[:256]),
           "loss_trained": judge.loss(trained.params, test[:256]),
           "sw_untrained": sliced_w2(x0, test, n), "sw_trained": by_sampler["pc"][0],
           "sw_floor": sliced_w2(train_x, test, n)}
    for name, (sw, nfe, _) in by_sampler.items():
        res[f"sw_{name}"], res[f"nfe_{name}"] = sw, nfe
    _report(seconds, [
        ("DSM loss (256 test digits)", f"{res['loss_untrained']:.4f}", f"{res['loss_trained']:.4f}"),
        (f"sliced W2 to test digits [floor {res['sw_floor']:.3f}]", f"{res['sw_untrained']:.3f}",
         f"{res['sw_trained']:.3f}")], np.clip(by_sampler["pc"][2], 0, 1), workdir, "digits")
    print(f"  the trained model by sampler (--config.sampling.method=...; sliced W2 to test digits, "
          f"{n} samples, {sample_seconds:.0f} s in all):")
    for name, (sw, nfe, x) in by_sampler.items():
        print(f"    {name:10s} {_describe(config, name):34s} {nfe:4d} NFE {sw:9.3f}")
        if name != "pc":
            files.write_samples(workdir / "demo_samples" / name / "sample", np.clip(x, 0, 1), name)
    print(f"  their samples: {workdir / 'demo_samples' / '<sampler>' / 'sample.png'}")
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--toy_steps", type=int, default=600)
    parser.add_argument("--digits_steps", type=int, default=DIGITS_STEPS, help="0 skips the digits")
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
