"""sde() and marginal_prob() agree; discretize() matches SPEC §1's tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from score_sde_jax import sde_lib

pytestmark = pytest.mark.usefixtures("x64")

SDES = {
    "ve": lambda: sde_lib.VESDE(0.01, 50.0, 1000),
    "vp": lambda: sde_lib.VPSDE(0.1, 20.0, 1000),
    "subvp": lambda: sde_lib.subVPSDE(0.1, 20.0, 1000),
}


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("var0", [0.0, 0.7])
def test_variance_ode(name, var0):
    """Var(t) = m(t)² var0 + std(t)² obeys dVar/dt = 2 (∂f/∂x) Var + g² (finite differences)."""
    sde = SDES[name]()
    t = jnp.linspace(0.05, 0.95, 19)
    x1 = jnp.ones((t.shape[0], 1))

    def var(t):
        return sde.mean_coeff(t) ** 2 * var0 + sde.marginal_prob(x1, t)[1] ** 2

    h = 1e-5
    dvar = (var(t + h) - var(t - h)) / (2 * h)
    drift, g = sde.sde(x1, t)
    dfdx = drift[:, 0]  # f is linear in x: f(1) = ∂f/∂x
    if name == "ve":
        # VE's marginal N(x0, σ(t)²) is the SDE's marginal started from x0 + σ_min z.
        np.testing.assert_allclose(dvar, g**2, rtol=1e-6)
    else:
        np.testing.assert_allclose(dvar, 2 * dfdx * var(t) + g**2, rtol=1e-6)


def test_ve_discretize_table():
    sde = SDES["ve"]()
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 1000))
    t = jnp.array([0.0, 0.5, 1.0])
    f, G = sde.discretize(jnp.ones((3, 2)), t)
    i = np.floor(np.array(t) * 999).astype(int)
    prev = np.where(i == 0, 0.0, sigmas[np.maximum(i - 1, 0)])
    np.testing.assert_allclose(G, np.sqrt(sigmas[i] ** 2 - prev**2), rtol=1e-10)
    np.testing.assert_array_equal(f, 0.0)


def test_vp_discretize_table():
    sde = SDES["vp"]()
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    x = jnp.full((3, 2), 2.0)
    t = jnp.array([0.0, 0.3337, 1.0])
    f, G = sde.discretize(x, t)
    i = np.floor(np.array(t) * 999).astype(int)
    np.testing.assert_allclose(G, np.sqrt(betas[i]), rtol=1e-10)
    np.testing.assert_allclose(f[:, 0], np.sqrt(1 - betas[i]) * 2.0 - 2.0, rtol=1e-10)
    np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-10)


def test_subvp_discretize_is_euler_maruyama():
    sde = SDES["subvp"]()
    x = jnp.full((2, 3), 1.5)
    t = jnp.array([0.2, 0.8])
    f, G = sde.discretize(x, t)
    drift, g = sde.sde(x, t)
    np.testing.assert_allclose(f, drift / 1000)
    np.testing.assert_allclose(G, g * np.sqrt(1 / 1000))


def test_subvp_std_is_not_square_rooted():
    sde = SDES["subvp"]()
    t = jnp.array([0.5])
    lmc = -0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1
    np.testing.assert_allclose(sde.marginal_prob(jnp.ones((1, 1)), t)[1], 1 - np.exp(2 * lmc))


@pytest.mark.parametrize("name", SDES)
def test_prior(name):
    sde = SDES[name]()
    z = sde.prior_sampling(jax.random.PRNGKey(0), (20000, 3))
    var = 50.0**2 if name == "ve" else 1.0
    np.testing.assert_allclose(jnp.var(z), var, rtol=0.03)
    expected = jax.scipy.stats.norm.logpdf(z, scale=np.sqrt(var)).sum(axis=1)
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-10)


def test_reverse_drift_and_probability_flow():
    sde = SDES["vp"]()
    score = lambda x, t: -x  # noqa: E731
    x = jnp.ones((2, 3))
    t = jnp.array([0.3, 0.6])
    f, g = sde.sde(x, t)
    rf, rg = sde.reverse(score).sde(x, t)
    np.testing.assert_allclose(rf, f + g[:, None] ** 2 * x)
    np.testing.assert_allclose(rg, g)
    pf, pg = sde.reverse(score, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(pf, f + 0.5 * g[:, None] ** 2 * x)
    np.testing.assert_array_equal(pg, 0.0)


def test_get_sde_from_config_and_errors():
    model = dict(sigma_min=0.01, sigma_max=50.0, beta_min=0.1, beta_max=20.0, num_scales=10)
    cfg = ConfigDict({"training": {"sde": "vesde"}, "model": model})
    sde, eps = sde_lib.get_sde(cfg)
    assert isinstance(sde, sde_lib.VESDE) and sde.N == 10 and eps == 1e-5
    cfg.training.sde = "subvpsde"
    assert isinstance(sde_lib.get_sde(cfg)[0], sde_lib.subVPSDE)
    cfg.training.sde = "bogus"
    with pytest.raises(ValueError, match="config.training.sde='bogus'.*vesde"):
        sde_lib.get_sde(cfg)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sde_lib.VESDE(5.0, 1.0)
