"""Classifier-free guidance on the exact Gaussian mixture: accuracy and sliced W₂ against the
guidance weight w and the guidance interval.

    python bench/cfg_guidance.py [--sampler pc|heun|dpm_solver] [--n 4000] [--steps 500]
        [--weights 0,0.5,1,2,4]

The mixture is configs/toy_gmm_cfg.py's (three overlapping isotropic components of std 1, VP SDE);
the scores are exact (``analytic.GaussianMixture.conditional_score_fn``: class c -> component c's
marginal score, the null label -> the mixture score), so the table shows what guidance does, not
what a network learned. For each (interval, w) and each class c, ``--n`` samples of the guided
score (``guidance.guided_score_fn``) are drawn and scored by

- acc: the fraction whose exact posterior class argmax_k p(k | x) is c (mean over c), the
  "classifier accuracy" of guidance; the first line gives it for exact class samples;
- SW2: sliced W₂ between the samples and exact samples of component c (mean over c); the
  first line gives the true-vs-true value (sampling noise).

NFE: the sampler's count for the guided score and for the plain conditional score; every guided
evaluation is one network call on a batch of 2B (guidance.py), so NFE per step is unguided's.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine  # noqa: E402
from configs.toy_gmm_cfg import get_config  # noqa: E402
from score_sde_jax import analytic, guidance, sampling, sde_lib  # noqa: E402
from score_sde_jax.data.toy import gaussian_mixture_from_config  # noqa: E402

INTERVALS = {"everywhere": None, "σ̃ in [0.3, 3]": (0.3, 3.0), "σ̃ ≤ 1": (0.0, 1.0),
             "σ̃ ≥ 1": (1.0, math.inf)}
SW_KEY = jax.random.PRNGKey(3)


def _sampler(name: str, sde: sde_lib.SDE, shape: tuple[int, int], steps: int, eps: float):
    if name == "pc":
        return sampling.get_pc_sampler(sde, shape, "euler_maruyama", "none", eps=eps)
    if name == "heun":
        return sampling.get_heun_sampler(sde, shape, num_steps=steps, eps=eps)
    return sampling.get_dpm_solver_sampler(sde, shape, num_steps=steps, eps=eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sampler", default="pc", choices=("pc", "heun", "dpm_solver"))
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=None,
                        help="PC: the SDE's N (default 500); heun / dpm_solver: num_steps (20)")
    parser.add_argument("--weights", default="0,0.5,1,2,4")
    args = parser.parse_args()
    config = get_config()
    steps = args.steps or (500 if args.sampler == "pc" else 20)
    config.model.num_scales = steps
    sde, eps = sde_lib.get_sde(config)
    mix = gaussian_mixture_from_config(config.data)
    k = mix.weights.shape[0]
    score = mix.conditional_score_fn(sde)
    sampler = _sampler(args.sampler, sde, (args.n, 2), steps, eps)
    weights = [float(w) for w in args.weights.split(",")]
    refs = [mix.component(c).sample(jax.random.PRNGKey(10 + c), args.n) for c in range(k)]

    def acc_sw(xs):
        acc = sum(float(jnp.mean(mix.posterior_class(x) == c)) for c, x in enumerate(xs)) / k
        sw = sum(float(analytic.sliced_wasserstein(SW_KEY, x, r)) for x, r in zip(xs, refs, strict=True))
        return acc, sw / k

    true = [mix.component(c).sample(jax.random.PRNGKey(20 + c), args.n) for c in range(k)]
    print(f"# {machine()}")
    print(f"# {args.sampler} sampler, {steps} steps, VP SDE, {args.n} samples a class, exact scores")
    acc, sw = acc_sw(true)
    print(f"{'exact class samples':<18} {'':>5} {acc:8.4f} {sw:8.4f}")
    print(f"{'interval':<18} {'w':>5} {'acc':>8} {'SW2':>8} {'NFE':>5} {'NFE w=0':>8}")
    plain_nfe = int(sampler(jax.random.PRNGKey(0), lambda x, t: score(x, t, 0))[1])
    for label, interval in INTERVALS.items():
        run = jax.jit(lambda w, c, interval=interval: sampler(
            jax.random.PRNGKey(0), guidance.guided_score_fn(sde, score, c, k, w, interval)))
        for w in weights:
            outs = [run(jnp.float32(w), jnp.int32(c)) for c in range(k)]
            acc, sw = acc_sw([x for x, _ in outs])
            print(f"{label:<18} {w:5.2f} {acc:8.4f} {sw:8.4f} {int(outs[0][1]):5d} {plain_nfe:8d}")


if __name__ == "__main__":
    main()
