"""Every sampler, driven by the exact mixture score, draws the true distribution (SPEC §4)."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from scipy import integrate

from score_sde_jax import analytic, ode_solver, sampling, sde_lib

GMM = analytic.default_mixture()
N_SAMPLES = 4000
SW_KEY = jax.random.PRNGKey(3)
REF = GMM.sample(jax.random.PRNGKey(1), N_SAMPLES)


def _sw(x):
    return float(analytic.sliced_wasserstein(SW_KEY, x, REF))


@functools.lru_cache
def noise_threshold():
    """mean + 3 sd of the sliced-Wasserstein distance of fresh true samples to REF."""
    d = [_sw(GMM.sample(jax.random.PRNGKey(100 + i), N_SAMPLES)) for i in range(16)]
    return float(np.mean(d) + 3 * np.std(d))


SDES = {
    "ve": (lambda: sde_lib.VESDE(N=300), 1e-5, 0.16),
    "vp": (lambda: sde_lib.VPSDE(N=300), 1e-3, 0.01),
    "subvp": (lambda: sde_lib.subVPSDE(N=300), 1e-3, 0.01),
}


def _pc_samples(name, predictor, corrector, scale=1.0):
    make, eps, snr = SDES[name]
    sde = make()
    score = GMM.score_fn(sde)
    sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), predictor, corrector, snr=snr, eps=eps)
    x, nfe = jax.jit(lambda r: sampler(r, lambda x, t: scale * score(x, t)))(jax.random.PRNGKey(0))
    return x, nfe


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion", "ancestral_sampling"])
@pytest.mark.parametrize("corrector", ["none", "langevin", "ald"])
def test_pc_sampler_matches_truth(name, predictor, corrector):
    x, nfe = _pc_samples(name, predictor, corrector)
    assert x.shape == (N_SAMPLES, 2) and bool(jnp.all(jnp.isfinite(x)))
    assert nfe == 300 * (1 + (corrector != "none"))
    assert _sw(x) < noise_threshold()


@pytest.mark.parametrize("name", SDES)
def test_wrong_score_is_detected(name):
    """The test above can fail: a score off by ×0.5 is far outside the noise."""
    x, _ = _pc_samples(name, "reverse_diffusion", "none", scale=0.5)
    assert _sw(x) > 1.5 * noise_threshold()


@pytest.mark.parametrize("name", SDES)
def test_ode_sampler_matches_truth(name):
    make, eps, _ = SDES[name]
    sde = make()
    score = GMM.score_fn(sde)
    ode = sampling.get_ode_sampler(sde, (N_SAMPLES, 2), rtol=1e-4, atol=1e-4, eps=eps)
    x, nfe = jax.jit(lambda r: ode(r, score))(jax.random.PRNGKey(0))
    assert _sw(x) < noise_threshold()
    assert 20 < int(nfe) < 400


def test_ode_is_deterministic_map_of_prior_and_invertible():
    """The PF-ODE sample of a given z is a fixed point map; integrating forward returns z."""
    sde = sde_lib.VPSDE()
    score = GMM.score_fn(sde)
    z = sde.prior_sampling(jax.random.PRNGKey(5), (8, 2))
    ode = sampling.get_ode_sampler(sde, (8, 2), rtol=1e-6, atol=1e-6, eps=1e-3)
    x, _ = ode(jax.random.PRNGKey(0), score, z=z)
    x2, _ = ode(jax.random.PRNGKey(9), score, z=z)
    np.testing.assert_array_equal(x, x2)
    rsde = sde.reverse(score, probability_flow=True)
    back, _ = ode_solver.solve_ode(lambda t, y: rsde.sde(y, jnp.full((8,), t))[0], x, 1e-3, 1.0,
                                 1e-6, 1e-6, "tsit5")
    np.testing.assert_allclose(back, z, atol=2e-3)


@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "heun"])
def test_ode_nfe_counts_every_evaluation(solver):
    count = [0]

    def bump(_):
        count[0] += 1
        return np.zeros((), np.float32)

    sde = sde_lib.VPSDE()
    score = GMM.score_fn(sde)

    def counted(x, t):
        return score(x, t) + io_callback(bump, jax.ShapeDtypeStruct((), jnp.float32), t, ordered=True)

    ode = sampling.get_ode_sampler(sde, (16, 2), rtol=1e-3, atol=1e-3, solver=solver, denoise=True)
    x, nfe = ode(jax.random.PRNGKey(0), counted)
    jax.block_until_ready(x)
    assert int(nfe) == count[0]


def test_gaussian_moments_precise():
    """On a single Gaussian (little sampling noise) the PC sampler's moments are exact."""
    g = analytic.GaussianMixture([1.0], [[1.0, -2.0]], [[[0.5, 0.2], [0.2, 0.3]]])
    sde = sde_lib.VPSDE(N=1000)
    sampler = sampling.get_pc_sampler(sde, (20000, 2), "euler_maruyama", "none")
    x, _ = jax.jit(lambda r: sampler(r, g.score_fn(sde)))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(x.mean(0), g.means[0], atol=0.02)
    np.testing.assert_allclose(jnp.cov(x.T), g.covs[0], atol=0.02)


def test_probability_flow_pc_sampler_and_corrector_only():
    sde = sde_lib.VESDE(N=300)
    score = GMM.score_fn(sde)
    pf = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), "reverse_diffusion", "none",
                                 probability_flow=True, eps=1e-5)
    x, _ = jax.jit(lambda r: pf(r, score))(jax.random.PRNGKey(0))
    assert _sw(x) < noise_threshold()
    c_only = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), "none", "langevin", eps=1e-5)
    x, nfe = jax.jit(lambda r: c_only(r, score))(jax.random.PRNGKey(0))
    assert nfe == 300 and bool(jnp.all(jnp.isfinite(x)))


def test_bad_names_list_valid_ones():
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match=r"unknown predictor 'rk4'.*euler_maruyama"):
        sampling.get_pc_sampler(sde, (2, 2), predictor="rk4")
    with pytest.raises(ValueError, match=r"unknown corrector 'hmc'.*langevin"):
        sampling.get_pc_sampler(sde, (2, 2), corrector="hmc")
    with pytest.raises(ValueError, match=r"unknown solver 'rk45'.*tsit5"):
        sampling.get_ode_sampler(sde, (2, 2), solver="rk45")


def test_wrong_score_shape_names_both_shapes():
    sde = sde_lib.VPSDE(N=10)
    sampler = sampling.get_pc_sampler(sde, (4, 2))
    with pytest.raises(ValueError, match=r"returned shape \(4, 3\) for x of shape \(4, 2\)"):
        sampler(jax.random.PRNGKey(0), lambda x, t: jnp.zeros((4, 3)))
    ode = sampling.get_ode_sampler(sde, (4, 2))
    with pytest.raises(ValueError, match=r"returned shape \(4,\) for x of shape \(4, 2\)"):
        ode(jax.random.PRNGKey(0), lambda x, t: t)


def sampling_config(**settings):
    """The default config (every config.sampling key) with ``settings`` in config.sampling."""
    from training_helpers import ROOT  # noqa: F401 -- puts configs/ on the path

    from configs.default_cifar10_configs import get_default_configs

    config = get_default_configs()
    config.sampling.update(settings)
    return config


def test_get_sampling_fn_from_config():
    cfg = sampling_config(method="pc", predictor="euler_maruyama", corrector="none", snr=0.1,
                          n_steps_each=1)
    sde = sde_lib.VPSDE(N=5)
    x, nfe = sampling.get_sampling_fn(cfg, sde, (3, 2), 1e-3)(jax.random.PRNGKey(0), GMM.score_fn(sde))
    assert x.shape == (3, 2) and nfe == 5
    cfg.sampling.method = "magic"
    with pytest.raises(ValueError, match="unknown sampling method 'magic'.*'ode'"):
        sampling.get_sampling_fn(cfg, sde, (3, 2), 1e-3)
    del cfg.sampling["rho"]
    with pytest.raises(ValueError, match="config.sampling.rho is missing"):
        sampling.settings(cfg)


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 1e-3)])
def test_the_controller_takes_scipys_steps_forwards_and_backwards(t0, t1, x64):
    """Every accepted step of Dopri5 + ScipyRK45Controller is scipy RK45's, from the initial
    step on, on a nonlinear time-dependent field (backwards: the sampler's direction)."""
    def field(t, y):
        return 2.0 * jnp.sin(6.0 * t) * jnp.tanh(y) + jnp.cos(3.0 * y[::-1])  # bounded: no blow-up

    y0, tol = jnp.array([0.3, -1.2, 2.0]), 1e-7
    sol = integrate.solve_ivp(lambda t, y: np.asarray(field(t, jnp.asarray(y))), (t0, t1), np.asarray(y0),
                              rtol=tol, atol=tol, method="RK45")
    term = diffrax.ODETerm(lambda t, y, args: field(t, y))
    ours = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0, t1, None, y0, saveat=diffrax.SaveAt(steps=True),
                               stepsize_controller=ode_solver.ScipyRK45Controller(tol, tol, 1.5))
    ts = np.asarray(ours.ts)[np.isfinite(np.asarray(ours.ts))]
    assert len(sol.t) > 10
    np.testing.assert_allclose(ts, sol.t[1:], rtol=1e-8)


def test_ode_sampler_as_accurate_as_scipy_rk45(x64):
    """At equal rtol = atol the ODE sampler takes scipy RK45's steps (the official solver), so its
    error to a tight solve is scipy's (the earlier diffrax PIDController default was 3.2x off)."""
    sde, shape, tol = sde_lib.VPSDE(), (16, 2), 1e-4
    score = analytic.default_mixture().score_fn(sde)
    z = sde.prior_sampling(jax.random.PRNGKey(0), shape)
    ref, _ = sampling.get_ode_sampler(sde, shape, 1e-9, 1e-9)(None, score, z=z)
    x, nfe = sampling.get_ode_sampler(sde, shape, tol, tol)(None, score, z=z)
    drift = jax.jit(lambda t, y: sde.reverse(score, probability_flow=True).sde(
        y.reshape(shape), jnp.full(shape[:1], t))[0].reshape(-1))
    sol = integrate.solve_ivp(lambda t, y: np.asarray(drift(t, y)), (sde.T, 1e-3), np.asarray(z).reshape(-1),
                              rtol=tol, atol=tol, method="RK45")
    ours, official = float(jnp.abs(x - ref).max()), float(np.abs(sol.y[:, -1].reshape(shape) - ref).max())
    assert ours <= 1.01 * official and official > 1e-6, (ours, official)
    assert int(nfe) == sol.nfev + 1  # the same steps; scipy shares f(T) between start-up and FSAL
