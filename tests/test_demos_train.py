"""The embedded digits default supports every sampler the README suggests.

The probability-flow samplers (ode, heun, dpm_solver) start at σ̃ = std/m ≈ 150, where a
per-pixel bias b of the network's noise prediction shifts the data prediction by σ̃ b, so they
need a better trained network than the PC sampler (whose noise forgets such errors): the
300-step demo model gave them saturated noise. The suite's trained digits model
(tests/digits_model.py: configs/digits.py's network in its label-conditional form, trained as
`make demo` trains it, 600 of the demo's 800 steps; stored in tests/data, and checked here to be
what this code trains), sampled unconditionally (the null label), must give deterministic
samples as close to the test digits as PC's. The probability-flow
samplers here are the two few-step ones (Heun, DPM-Solver); the adaptive ODE sampler (~500 NFE
on this model, the costliest) is measured by ``make demo`` and checked on the exact score below.
"""

from __future__ import annotations

import digits_model
import jax
import numpy as np

from score_sde_jax import analytic, sampling, sde_lib
from score_sde_jax.demos import train as demo_train

N = 100  # samples per sampler


def test_the_stored_digits_model_is_what_this_code_trains(tmp_path):
    """The first updates of the stored run (tests/data/trained_digits.npz), trained again here
    by ``run_lib.train``: the same change of every parameter and EMA leaf, in size and
    direction, to 1e-3 of its size plus 1e-3 of the median leaf's. Float32 rounding on other
    CPUs and XLA versions stays far below that; the second term covers the leaves whose
    gradient is zero but for rounding (the attention's key bias: softmax ignores a shift of
    every logit). A changed loss, optimizer, EMA, data stream or initialisation moves the
    updates by far more. If this fails after an intended change of training, make the
    weights again: ``PYTHONPATH=. .venv/bin/python tests/data/make_trained_digits.py``."""
    got = digits_model.update_summary(*digits_model.train(tmp_path, digits_model.CHECK_STEPS))
    want = digits_model.stored_summary()
    assert int(got["step"]) == int(want["step"]) == digits_model.CHECK_STEPS
    for name in ("params", "params_ema"):
        norm = want[f"{name}_norm"]
        assert got[f"{name}_norm"].shape == norm.shape, "the network's parameters changed"
        tol = 1e-3 * (norm + np.median(norm))
        for stat in ("norm", "projection"):
            err = np.abs(got[f"{name}_{stat}"] - want[f"{name}_{stat}"])
            assert np.all(err <= tol), (name, stat, int(np.argmax(err / tol)), float(np.max(err / tol)))


def test_deterministic_samplers_are_as_close_to_the_test_digits_as_pc(trained_digits):
    config, params = trained_digits
    test = demo_train.held_out_digits(config)
    samplers = {k: demo_train.DIGITS_SAMPLERS[k] for k in ("pc", "heun", "dpm_solver")}
    judge = demo_train.Judge(config, N, samplers)
    res = demo_train.sampler_distances(judge, params, test, N)
    floor = demo_train.sliced_w2(test[N:], test, N)
    sw = {name: v[0] for name, v in res.items()}
    assert sw["pc"] < 2 * floor, (sw, floor)
    assert sw["heun"] < 1.5 * sw["pc"] and sw["dpm_solver"] < 1.5 * sw["pc"], (sw, floor)
    for name, (_, _, x) in res.items():  # not saturated: nearly all pixels in the data range
        assert np.percentile(x, 1) > -0.5 and np.percentile(x, 99) < 1.5, (name, x.min(), x.max())


def test_every_sampler_recovers_digits_from_the_exact_score_in_the_data_scaling():
    """A sampler bug (ε, σ_min, noise removal, the data scaling) would show with the exact score
    of a mixture of narrow Gaussians at 16 training digits in [-1, 1], in the (B, 8, 8, 1) shape."""
    from sklearn.datasets import load_digits

    digits = load_digits().images.reshape(-1, 64) / 8.0 - 1.0
    k = 16
    gmm = analytic.GaussianMixture(np.ones(k), digits[:k], np.stack([np.eye(64) * 0.05**2] * k))
    sde = sde_lib.VPSDE(0.1, 20.0, 100)
    flat = gmm.score_fn(sde)

    def score(x, t):
        return flat(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    shape, eps = (N, 8, 8, 1), 1e-3
    samplers = {"pc": sampling.get_pc_sampler(sde, shape, "euler_maruyama", "none", eps=eps),
                "ode": sampling.get_ode_sampler(sde, shape, eps=eps, denoise=True),
                "heun": sampling.get_heun_sampler(sde, shape, eps=eps),
                "dpm_solver": sampling.get_dpm_solver_sampler(sde, shape, eps=eps, denoise=True)}
    truth = gmm.sample(jax.random.PRNGKey(0), N)
    floor = demo_train.sliced_w2(np.asarray(gmm.sample(jax.random.PRNGKey(1), N)), truth, N)
    sw = {name: demo_train.sliced_w2(np.asarray(jax.jit(lambda rng, s=sampler: s(rng, score)[0])(
        jax.random.PRNGKey(2))).reshape(N, -1), truth, N) for name, sampler in samplers.items()}
    assert max(sw.values()) < 1.5 * floor, (sw, floor)  # a broken sampler is off by > 10x
