"""Classifier-free guidance (score_sde_jax/guidance.py) against the exact scores of a Gaussian
mixture: the conditional score of class c is component c's own marginal score, the
unconditional one the mixture's (analytic.GaussianMixture.conditional_score_fn)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from sklearn.datasets import load_digits

from score_sde_jax import analytic, datasets, eval_lib, guidance, sampling, sde_lib, sharding

# Three overlapping isotropic components (std 1): the exact Bayes classifier is right on only
# ~92 % of class-0 samples, so guidance has room to sharpen the classes.
MIX = analytic.GaussianMixture([0.2, 0.3, 0.5], [[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]],
                               [np.eye(2)] * 3)
K = 3
N_SAMPLES = 4000
SW_KEY = jax.random.PRNGKey(3)
SDES = {"ve": lambda: sde_lib.VESDE(N=300), "vp": lambda: sde_lib.VPSDE(N=300),
        "subvp": lambda: sde_lib.subVPSDE(N=300)}
EPS = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}


def _accuracy(x, c):
    return float(jnp.mean(MIX.posterior_class(x) == c))


@functools.lru_cache
def _pc_run(name):
    """Jitted ``(w, c) -> x`` of the Euler–Maruyama sampler with the exact guided score."""
    sde = SDES[name]()
    score = MIX.conditional_score_fn(sde)
    sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), "euler_maruyama", "none",
                                      eps=EPS[name])
    return jax.jit(lambda w, c: sampler(jax.random.PRNGKey(0),
                                        guidance.guided_score_fn(sde, score, c, K, w))[0])


# ---------------------------------------------------------------------------- exact scores
@pytest.mark.parametrize("name", SDES)
def test_conditional_score_is_the_component_and_null_is_the_mixture(name, x64):
    sde = SDES[name]()
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 2)) * 3
    t = jax.random.uniform(jax.random.PRNGKey(2), (64,), minval=0.01, maxval=1.0)
    score = jax.jit(MIX.conditional_score_fn(sde))  # jitted: one program, not one per operation
    m = np.asarray(sde.mean_coeff(t))[:, None]
    std = np.asarray(sde.marginal_prob(x, t)[1])[:, None]
    for c in range(K):  # N(m μ_c, (m² + std²) I): score −(x − m μ_c) / (m² + std²)
        by_hand = -(np.asarray(x) - m * np.asarray(MIX.means[c])) / (m**2 + std**2)
        np.testing.assert_allclose(score(x, t, jnp.full((64,), c)), by_hand, rtol=1e-12)
        np.testing.assert_allclose(score(x, t, jnp.full((64,), c)),
                                   jax.jit(MIX.component(c).score_fn(sde))(x, t), rtol=1e-12)
    np.testing.assert_allclose(score(x, t, jnp.full((64,), K)), jax.jit(MIX.score_fn(sde))(x, t),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_guided_score_equals_the_closed_form(name, w, x64):
    """s_w = (1 + w) ∇log p_t(x | c) − w ∇log p_t(x), labels mixed within the batch."""
    sde = SDES[name]()
    x = jax.random.normal(jax.random.PRNGKey(1), (60, 2)) * 3
    t = jnp.linspace(0.01, 1.0, 60)
    c = jnp.arange(60) % K
    guided = jax.jit(guidance.guided_score_fn(sde, MIX.conditional_score_fn(sde), c, K, w))(x, t)

    @jax.jit
    def expected(x, t):
        comp = jnp.stack([MIX.component(k).score_fn(sde)(x, t) for k in range(K)])
        return (1 + w) * comp[c, jnp.arange(60)] - w * MIX.score_fn(sde)(x, t)

    np.testing.assert_allclose(guided, expected(x, t), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_guidance_interval_switches_guidance_off_outside(name, x64):
    sde = SDES[name]()
    lo, hi = (0.5, 5.0) if name == "ve" else (0.3, 3.0)
    t = jnp.linspace(0.01, 1.0, 100)
    x = jax.random.normal(jax.random.PRNGKey(4), (100, 2)) * 2
    score = MIX.conditional_score_fn(sde)
    inside = np.asarray((guidance.noise_scale(sde, t) >= lo) & (guidance.noise_scale(sde, t) <= hi))
    assert 10 < inside.sum() < 90  # both regimes occur
    if name == "ve":  # σ̃ = σ(t) for VE
        np.testing.assert_allclose(guidance.noise_scale(sde, t), sde.sigma(t), rtol=1e-12)
    interval = jax.jit(guidance.guided_score_fn(sde, score, 1, K, 2.0, (lo, hi)))(x, t)
    everywhere = jax.jit(guidance.guided_score_fn(sde, score, 1, K, 2.0))(x, t)
    unguided = jax.jit(guidance.guided_score_fn(sde, score, 1, K, 0.0))(x, t)
    np.testing.assert_allclose(interval[inside], everywhere[inside], rtol=1e-12)
    np.testing.assert_allclose(interval[~inside], unguided[~inside], rtol=1e-12)
    assert float(jnp.max(jnp.abs(everywhere - unguided))) > 0.1


def test_interval_and_label_checks():
    sde = sde_lib.VPSDE()
    assert guidance.check_interval(None) == (0.0, float("inf"))
    with pytest.raises(ValueError, match="sigma_lo <= sigma_hi"):
        guidance.check_interval((2.0, 1.0))
    with pytest.raises(ValueError, match="class label 3"):
        guidance.guided_score_fn(sde, MIX.conditional_score_fn(sde), 3, K, 1.0)


# ---------------------------------------------------------------------------- sampling
@functools.lru_cache
def _sw_floor(c):
    """(true component sample, mean + 3 sd of SW₂ of fresh true samples to it)."""
    comp = MIX.component(c)
    ref = comp.sample(jax.random.PRNGKey(1), N_SAMPLES)
    d = [float(analytic.sliced_wasserstein(SW_KEY, comp.sample(jax.random.PRNGKey(100 + i),
                                                                N_SAMPLES), ref))
         for i in range(12)]
    return ref, float(np.mean(d) + 3 * np.std(d))


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_unguided_conditional_score_samples_the_component(name):
    ref, floor = _sw_floor(0)
    x = _pc_run(name)(jnp.float32(0.0), jnp.int32(0))
    assert float(analytic.sliced_wasserstein(SW_KEY, x, ref)) < floor
    # the test can fail: the mixture (the null label) is far from component 0
    mixture = _pc_run(name)(jnp.float32(0.0), jnp.int32(K))
    assert float(analytic.sliced_wasserstein(SW_KEY, mixture, ref)) > 5 * floor


def test_exact_posterior_accuracy_rises_with_the_guidance_weight():
    """w = 0 matches the Bayes accuracy of true class-0 samples; then it rises with w."""
    exact = _accuracy(MIX.component(0).sample(jax.random.PRNGKey(9), 20000), 0)  # ≈ 0.92
    acc = [_accuracy(_pc_run("vp")(jnp.float32(w), jnp.int32(0)), 0) for w in (0.0, 0.25, 0.5, 1.0)]
    assert abs(acc[0] - exact) < 3 * np.sqrt(exact * (1 - exact) / N_SAMPLES), (acc, exact)
    assert bool(np.all(np.diff(acc) > 0)), acc
    assert acc[-1] > 0.99, acc


def test_a_guidance_interval_gives_part_of_the_gain():
    """Guiding only at σ̃ in [0.5, 2] (VE): accuracy between w = 0 and guidance everywhere."""
    sde = SDES["ve"]()
    score = MIX.conditional_score_fn(sde)
    sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), "euler_maruyama", "none", eps=1e-5)
    x = jax.jit(lambda: sampler(jax.random.PRNGKey(0), guidance.guided_score_fn(
        sde, score, 0, K, 1.0, (0.5, 2.0)))[0])()
    none, full = (_accuracy(_pc_run("ve")(jnp.float32(w), jnp.int32(0)), 0) for w in (0.0, 1.0))
    assert none < _accuracy(x, 0) < full, (none, _accuracy(x, 0), full)


# ---------------------------------------------------------------------------- one call a step
def _counted(score, calls):
    """``score`` whose every evaluation is recorded (the batch size it was called with)."""

    def record(b):
        calls.append(int(b))
        return np.zeros((), np.float32)

    def fn(x, t, y):
        bump = io_callback(record, jax.ShapeDtypeStruct((), jnp.float32), x.shape[0], ordered=True)
        return score(x, t, y) + bump

    return fn


SAMPLERS = {
    "pc": lambda sde: sampling.get_pc_sampler(sde, (16, 2), "reverse_diffusion", "langevin",
                                              eps=1e-3),
    "ode": lambda sde: sampling.get_ode_sampler(sde, (16, 2), rtol=1e-3, atol=1e-3, eps=1e-3),
    "heun": lambda sde: sampling.get_heun_sampler(sde, (16, 2), num_steps=8),
    "dpm_solver": lambda sde: sampling.get_dpm_solver_sampler(sde, (16, 2), num_steps=8),
}


@pytest.mark.parametrize("method", SAMPLERS)
def test_one_network_call_per_guided_step(method):
    """Guided sampling makes as many network calls as the sampler's NFE (each on 2B), the same
    NFE as unguided sampling; w = 0 (a Python 0) calls on B."""
    sde = sde_lib.VPSDE(N=20)
    sampler = SAMPLERS[method](sde)
    counts = {}
    for w in (1.5, 0.0):
        calls = []
        score = guidance.guided_score_fn(sde, _counted(MIX.conditional_score_fn(sde), calls), 0, K, w)
        x, nfe = sampler(jax.random.PRNGKey(0), score)
        jax.block_until_ready(x)
        assert len(calls) == int(nfe) and set(calls) == {32 if w else 16}, (w, nfe, len(calls))
        counts[w] = int(nfe)
    _, plain = sampler(jax.random.PRNGKey(0), lambda x, t: MIX.conditional_score_fn(sde)(x, t, 0))
    if method != "ode":  # adaptive steps: the count follows the (guided) field
        assert counts[1.5] == counts[0.0] == int(plain)


def test_batched_guidance_equals_two_separate_calls():
    """[x; x], [t; t], [c; ∅] in one call: the same as s(x, t, c) and s(x, t, ∅) apart, for a
    network whose output depends on the labels nonlinearly and per example."""

    def fake(x, t, y):
        yf = y.astype(x.dtype)[:, None]
        return jnp.sin(x * (1 + yf)) + t[:, None] * yf**2 - jnp.cos(yf) * x[:, ::-1]

    sde = sde_lib.VESDE()
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    t = jnp.linspace(0.1, 1.0, 8)
    c = jnp.array([0, 1, 2, 0, 1, 2, 2, 1])
    guided = guidance.guided_score_fn(sde, fake, c, K, 0.7)(x, t)
    separate = 1.7 * fake(x, t, c) - 0.7 * fake(x, t, jnp.full((8,), K))
    np.testing.assert_allclose(guided, separate, rtol=1e-6, atol=1e-6)


def test_trained_digits_model_draws_the_asked_digit(trained_digits):
    """The suite's trained label-conditional digits model (tests/digits_model.py, 600 steps),
    sampled as ``--mode eval`` samples it (eval_lib.get_sample_fn: labels i mod 10, 100
    Euler-Maruyama steps, guided). Judge: the nearest class mean of the 1500 training digits
    (right on ~85 % of the other 297 real digits). With w = 0 the samples are about as
    recognisable as real digits (81 % when written); guidance w = 1 sharpens them: >= 95 % of
    the samples of class k are called "k" (100 %), more than with w = 0; the same samples on 8
    devices as on 1."""
    config, params = trained_digits
    digits = load_digits()
    pixels, target = digits.images.reshape(-1, 64) / 16.0, digits.target
    means = np.stack([pixels[:1500][target[:1500] == k].mean(0) for k in range(10)])

    def nearest_mean(x):
        return np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)

    assert 0.8 < np.mean(nearest_mean(pixels[1500:]) == target[1500:]) < 0.95
    sde, eps = sde_lib.get_sde(config)
    inverse = datasets.get_data_inverse_scaler(config)

    def draw(w, n, devices):
        c = config.copy_and_resolve_references()
        c.sampling.cfg_scale = w
        mesh = sharding.make_mesh(devices)
        x, _ = eval_lib.get_sample_fn(c, sde, eval_lib.score_fn_builder(c, sde), n, eps, mesh)(
            sharding.replicate(params, mesh), jax.random.PRNGKey(0),
            sharding.global_array(np.arange(n), mesh))
        return np.clip(np.asarray(inverse(x)), 0.0, 1.0).reshape(n, 64)

    n = 80  # 8 of each digit; a multiple of the device count
    guided, unguided = draw(1.0, n, jax.devices()), draw(0.0, n, jax.devices())
    accuracy = {w: float(np.mean(nearest_mean(x) == np.arange(n) % 10))  # eval_lib.sample_labels
                for w, x in ((1.0, guided), (0.0, unguided))}
    assert accuracy[1.0] >= 0.95 and accuracy[1.0] > accuracy[0.0], accuracy
    assert jax.device_count() == 8  # sample i from its own key: the first 16 alone on 1 device
    assert float(np.abs(draw(1.0, 16, jax.devices()[:1]) - guided[:16]).max()) < 1e-3
