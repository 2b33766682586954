"""Few-step samplers (EDM Heun, DPM-Solver++) against exact answers: the σ̃ parametrization of each
SDE, Tweedie's x̂₀, the exact probability-flow map of a Gaussian (convergence order), the mixture's
true samples at ≤ 20 NFE, and exact NFE counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from test_sampling import GMM, N_SAMPLES, _sw, noise_threshold, sampling_config

from score_sde_jax import analytic, sampling, sde_lib

SDES = {
    "ve": (sde_lib.VESDE, 1e-5),
    "vp": (sde_lib.VPSDE, 1e-3),
    "subvp": (sde_lib.subVPSDE, 1e-3),
}
GAUSS = dict(weights=[1.0], means=[[1.0, -2.0]], covs=[[[0.5, 0.2], [0.2, 0.3]]])


@pytest.mark.parametrize("name", SDES)
def test_sigma_schedule_inverts_the_sde(name, x64):
    sde = SDES[name][0]()
    sched = sampling.SigmaSchedule(sde)
    t = jnp.linspace(1e-5, 1.0, 101)
    m = sde.mean_coeff(t)
    std = sde.marginal_prob(jnp.zeros_like(t), t)[1]
    sigma = sched.sigma(t)
    np.testing.assert_allclose(sigma, std / m, rtol=1e-12)
    np.testing.assert_allclose(sched.time(sigma), t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sched.mean_coeff(sigma), m, rtol=1e-11)
    np.testing.assert_allclose(sched.std(sigma), std, rtol=1e-11)
    if name == "subvp":  # std = 1 − m², so σ̃ = 1/m − m (not √(1 − m²)/m as for VP)
        np.testing.assert_allclose(sigma, 1 / m - m, rtol=1e-9)


@pytest.mark.parametrize("name", SDES)
def test_data_prediction_is_the_posterior_mean(name, x64):
    """x̂₀ = (x + std² s)/m equals E[x₀ | x_t] = μ + m Σ (m² Σ + std² I)⁻¹ (x − m μ) exactly."""
    sde = SDES[name][0]()
    g = analytic.GaussianMixture(**GAUSS)
    sched = sampling.SigmaSchedule(sde)
    x0_fn = sampling.data_prediction(g.score_fn(sde), sched)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2)) * 3
    for sigma in (1e-3, 0.3, 2.0, 40.0):
        m, std = float(sched.mean_coeff(jnp.asarray(sigma))), float(sched.std(jnp.asarray(sigma)))
        mu, cov = g.means[0], g.covs[0]
        gain = m * cov @ jnp.linalg.inv(m**2 * cov + std**2 * jnp.eye(2))
        want = mu + (x - m * mu) @ gain.T
        np.testing.assert_allclose(x0_fn(x, jnp.full((5,), sigma)), want, rtol=1e-9, atol=1e-10)
        score = g.score_fn(sde)(x, sched.time(jnp.full((5,), sigma)))
        noise = sampling.score_to_noise(score, jnp.full((5,), std))
        np.testing.assert_allclose(sampling.noise_to_score(noise, jnp.full((5,), std)), score)
        back = sampling.data_to_score(x, want, jnp.full((5,), m), jnp.full((5,), std))
        np.testing.assert_allclose(back, score, rtol=1e-8, atol=1e-9)


def _exact_flow(sde, g, z, t_end):
    """The PF-ODE map of a Gaussian from T to t_end (None: to t = 0). In Σ's eigenbasis each
    coordinate of x − m μ scales with √v(t), v = m² λ + std²."""
    lam, vecs = np.linalg.eigh(np.asarray(g.covs[0]))
    mu = np.asarray(g.means[0])

    def m_var(t):
        tt = jnp.asarray([t])
        m = float(sde.mean_coeff(tt)[0])
        std = float(sde.marginal_prob(jnp.zeros(1), tt)[1][0])
        return m, m**2 * lam + std**2

    m_T, v_T = m_var(sde.T)
    m_e, v_e = (1.0, lam) if t_end is None else m_var(t_end)
    return m_e * mu + ((np.asarray(z) - m_T * mu) @ vecs * np.sqrt(v_e / v_T)) @ vecs.T


CONVERGENCE = {  # sampler factory, order, ends at t = 0 (Heun) or ε
    "heun": (lambda sde, n, eps: sampling.get_heun_sampler(sde, (64, 2), n, eps=eps), 2, True),
    "dpm1": (lambda sde, n, eps: sampling.get_dpm_solver_sampler(
        sde, (64, 2), n, 1, lower_order_final=False, eps=eps), 1, False),
    "dpm2": (lambda sde, n, eps: sampling.get_dpm_solver_sampler(
        sde, (64, 2), n, 2, lower_order_final=False, eps=eps), 2, False),
    "dpm3": (lambda sde, n, eps: sampling.get_dpm_solver_sampler(
        sde, (64, 2), n, 3, lower_order_final=False, eps=eps), 3, False),
}


@pytest.mark.parametrize("name, solver", [(n, s) for n in SDES for s in CONVERGENCE
                                          if s != "dpm1" or n == "vp"])
def test_converges_to_the_exact_flow_at_its_order(name, solver, x64):
    """Doubling the steps divides the error to the exact Gaussian flow by ≈ 2^order."""
    make_sde, eps = SDES[name]
    sde = make_sde()
    g = analytic.GaussianMixture(**GAUSS)
    factory, order, to_zero = CONVERGENCE[solver]
    z = sde.prior_sampling(jax.random.PRNGKey(0), (64, 2))
    want = _exact_flow(sde, g, z, None if to_zero else eps)
    errs = []
    for n in (20, 40):
        x, _ = factory(sde, n, eps)(jax.random.PRNGKey(1), g.score_fn(sde), z=z)
        errs.append(float(np.max(np.abs(np.asarray(x) - want))))
    ratio = errs[0] / errs[1]
    assert errs[1] < {1: 0.2, 2: 0.04, 3: 3e-3}[order], errs
    assert {1: 1.7 < ratio < 2.3, 2: 3.0 < ratio < 5.5, 3: ratio > 7.0}[order], (errs, ratio)


FEW_STEP = {  # name -> (factory(sde, eps, shape), NFE); all ≤ 20 NFE
    "heun": (lambda sde, eps, shape: sampling.get_heun_sampler(
        # sub-VP's ε = 1e-3 is σ̃ = 1.1e-4; σ_min = 0.01 (VE's, VP's) spends the 10 steps better
        sde, shape, 10, eps=eps, sigma_min=0.01 if isinstance(sde, sde_lib.subVPSDE) else None), 19),
    "dpm_2m": (lambda sde, eps, shape: sampling.get_dpm_solver_sampler(sde, shape, 20, 2, eps=eps), 20),
}


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("solver", FEW_STEP)
def test_few_step_samples_match_truth(name, solver):
    make_sde, eps = SDES[name]
    sde = make_sde()
    factory, want_nfe = FEW_STEP[solver]
    sampler = factory(sde, eps, (N_SAMPLES, 2))
    x, nfe = jax.jit(lambda r: sampler(r, GMM.score_fn(sde)))(jax.random.PRNGKey(0))
    assert int(nfe) == want_nfe and bool(jnp.all(jnp.isfinite(x)))
    assert _sw(x) < noise_threshold()


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_adaptive_and_churn_samples_match_truth(name):
    make_sde, eps = SDES[name]
    sde = make_sde()
    score = GMM.score_fn(sde)
    adaptive = sampling.get_adaptive_dpm_solver_sampler(sde, (N_SAMPLES, 2), 3, eps=eps)
    x, nfe = jax.jit(lambda r: adaptive(r, score))(jax.random.PRNGKey(0))
    assert 20 < int(nfe) < 300 and _sw(x) < noise_threshold()
    churn = sampling.get_heun_sampler(sde, (N_SAMPLES, 2), 25, s_churn=5.0, s_tmax=10.0, eps=eps)
    run = jax.jit(lambda r: churn(r, score)[0])
    x = run(jax.random.PRNGKey(0))
    assert _sw(x) < noise_threshold()
    assert not np.allclose(x, run(jax.random.PRNGKey(1)))  # churn is stochastic given z


def _counted(score):
    count = [0]

    def bump(_):
        count[0] += 1
        return np.zeros((), np.float32)

    def counted(x, t):
        return score(x, t) + io_callback(bump, jax.ShapeDtypeStruct((), jnp.float32), t, ordered=True)

    return counted, count


NFE_CASES = {
    "heun": lambda sde: sampling.get_heun_sampler(sde, (16, 2), 4),
    "heun_churn": lambda sde: sampling.get_heun_sampler(sde, (16, 2), 5, s_churn=3.0),
    "dpm2_denoise": lambda sde: sampling.get_dpm_solver_sampler(sde, (16, 2), 6, 2, denoise=True),
    "dpm3_karras": lambda sde: sampling.get_dpm_solver_sampler(sde, (16, 2), 16, 3, "karras"),
    "adaptive2": lambda sde: sampling.get_adaptive_dpm_solver_sampler(sde, (16, 2), 2, 0.01, 0.01),
    "adaptive3": lambda sde: sampling.get_adaptive_dpm_solver_sampler(sde, (16, 2), 3, denoise=True),
}


@pytest.mark.parametrize("case", NFE_CASES)
def test_nfe_counts_every_evaluation(case):
    sde = sde_lib.subVPSDE()
    counted, count = _counted(GMM.score_fn(sde))
    x, nfe = NFE_CASES[case](sde)(jax.random.PRNGKey(0), counted)
    jax.block_until_ready(x)
    assert int(nfe) == count[0] > 0
    if case.startswith("heun"):
        assert nfe == 2 * {"heun": 4, "heun_churn": 5}[case] - 1


def test_config_selects_fast_samplers():
    sde = sde_lib.VPSDE()
    score = GMM.score_fn(sde)
    rng = jax.random.PRNGKey(0)
    cfg = sampling_config(method="heun", num_steps=6, rho=5.0)
    x, nfe = sampling.get_sampling_fn(cfg, sde, (4, 2), 1e-3)(rng, score)
    want, _ = sampling.get_heun_sampler(sde, (4, 2), 6, rho=5.0)(rng, score)
    assert nfe == 11
    np.testing.assert_array_equal(x, want)
    cfg = sampling_config(method="dpm_solver", num_steps=9, order=3, skip_type="time_uniform",
                          noise_removal=True)
    x, nfe = sampling.get_sampling_fn(cfg, sde, (4, 2), 1e-3)(rng, score)
    assert nfe == 10 and x.shape == (4, 2)
    cfg.sampling.adaptive = True
    x, nfe = sampling.get_sampling_fn(cfg, sde, (4, 2), 1e-3)(rng, score)
    assert isinstance(nfe, jax.Array) and int(nfe) > 10 and x.shape == (4, 2)


FACTORIES = {"heun": sampling.get_heun_sampler, "dpm": sampling.get_dpm_solver_sampler,
             "adaptive": sampling.get_adaptive_dpm_solver_sampler}
BAD = [
    ("heun", {"num_steps": 0}, r"heun: num_steps must be >= 1, got 0"),
    ("heun", {"rho": 0}, r"heun: rho must be > 0"),
    ("heun", {"s_churn": -1}, r"s_churn, s_noise must be >= 0"),
    ("heun", {"s_tmin": 5, "s_tmax": 1}, r"s_tmin \(5\) must not exceed s_tmax \(1\)"),
    ("heun", {"sigma_min": 0.0}, r"sigma_min must be > 0"),
    ("dpm", {"order": 4}, r"dpm_solver: order must be 1, 2 or 3, got 4"),
    ("dpm", {"num_steps": 0}, r"num_steps must be >= 1"),
    ("dpm", {"skip_type": "quad"}, r"unknown skip_type 'quad'; valid: \['logsnr', 'time_uniform',"),
    ("adaptive", {"order": 1}, r"adaptive: order must be 2 or 3"),
    ("adaptive", {"rtol": 0}, r"rtol, atol must be > 0"),
]


@pytest.mark.parametrize("factory, options, message", BAD)
def test_bad_options_raise_clear_errors(factory, options, message):
    with pytest.raises(ValueError, match=message):
        FACTORIES[factory](sde_lib.VPSDE(), (2, 2), **options)


def test_bad_inputs_raise_clear_errors():
    sde = sde_lib.VPSDE()
    score = GMM.score_fn(sde)
    sampler = sampling.get_dpm_solver_sampler(sde, (4, 2), 5)
    with pytest.raises(ValueError, match=r"z has shape \(3, 2\), the sampler was built for shape \(4, 2\)"):
        sampler(jax.random.PRNGKey(0), score, z=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"returned shape \(4,\) for x of shape \(4, 2\)"):
        sampler(jax.random.PRNGKey(0), lambda x, t: t)

    class OtherSDE(sde_lib.SDE):
        sde = marginal_prob = prior_sampling = prior_logp = None

    with pytest.raises(ValueError, match="need a VESDE, VPSDE or subVPSDE, got OtherSDE"):
        sampling.get_heun_sampler(OtherSDE(10), (4, 2))
    adaptive = sampling.get_adaptive_dpm_solver_sampler(sde, (4, 2), max_steps=3)
    with pytest.raises(Exception, match="max_steps=3"):
        jax.block_until_ready(adaptive(jax.random.PRNGKey(0), score)[0])
