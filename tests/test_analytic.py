"""The exact-answer oracle itself: densities, scores, perturbed marginals, conditionals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_sde_jax import analytic, sde_lib

pytestmark = pytest.mark.usefixtures("x64")


def test_log_prob_matches_scipy():
    gmm = analytic.default_mixture()
    x = gmm.sample(jax.random.PRNGKey(0), 50)
    expected = np.log(sum(
        float(w) * stats.multivariate_normal(np.array(m), np.array(c)).pdf(np.array(x))
        for w, m, c in zip(gmm.weights, gmm.means, gmm.covs, strict=True)
    ))
    np.testing.assert_allclose(gmm.log_prob(x), expected, rtol=1e-10)


def test_sample_moments():
    gmm = analytic.default_mixture()
    x = gmm.sample(jax.random.PRNGKey(1), 200000)
    mean = jnp.sum(gmm.weights[:, None] * gmm.means, axis=0)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.03)


def test_perturbed_marginal_is_monte_carlo_marginal():
    """p_t in closed form has the moments of m(t) x0 + std(t) z, and log_prob_t agrees with it."""
    gmm = analytic.default_mixture()
    x0 = gmm.sample(jax.random.PRNGKey(2), 200000)
    z = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
    for sde in (sde_lib.VPSDE(), sde_lib.subVPSDE(), sde_lib.VESDE()):
        t = 0.3
        pt = gmm.perturbed(sde, t)
        mean, std = sde.marginal_prob(x0, jnp.full((x0.shape[0],), t))
        xt = mean + std[:, None] * z
        mu = jnp.sum(pt.weights[:, None] * pt.means, axis=0)
        second = jnp.einsum("k,kij->ij", pt.weights, pt.covs + jnp.einsum("ki,kj->kij", pt.means, pt.means))
        np.testing.assert_allclose(xt.mean(0), mu, atol=0.03)
        np.testing.assert_allclose(jnp.cov(xt.T), second - jnp.outer(mu, mu), rtol=0.02, atol=0.03)
        lp = gmm.log_prob_t(sde)(x0[:5], jnp.full((5,), t))
        np.testing.assert_allclose(lp, pt.log_prob(x0[:5]), rtol=1e-10)


def test_score_is_gradient_of_log_prob_t():
    gmm = analytic.default_mixture()
    sde = sde_lib.VPSDE()
    x = jnp.array([[0.1, -0.3], [1.0, 2.0]])
    t = jnp.array([0.1, 0.7])
    s = gmm.score_fn(sde)(x, t)
    h = 1e-6
    lp = gmm.log_prob_t(sde)
    for d in range(2):
        e = jnp.zeros(2).at[d].set(h)
        fd = (lp(x + e, t) - lp(x - e, t)) / (2 * h)
        np.testing.assert_allclose(s[:, d], fd, rtol=1e-6)


def test_conditional_matches_bayes_rule():
    gmm = analytic.default_mixture()
    cond = gmm.conditional(jnp.array([3.0, 0.0]), np.array([1, 0]))
    xu = jnp.linspace(-8, 8, 4001)[:, None]
    joint = gmm.log_prob(jnp.concatenate([jnp.full_like(xu, 3.0), xu], axis=1))
    dens = jnp.exp(joint - jax.nn.logsumexp(joint)) / (xu[1, 0] - xu[0, 0])
    np.testing.assert_allclose(jnp.exp(cond.log_prob(xu)), dens, atol=1e-6)


def test_sliced_wasserstein_properties():
    x = jax.random.normal(jax.random.PRNGKey(0), (1000, 2))
    assert float(analytic.sliced_wasserstein(jax.random.PRNGKey(1), x, x)) == 0.0
    shifted = float(analytic.sliced_wasserstein(jax.random.PRNGKey(1), x, x + jnp.array([3.0, 0.0])))
    # projected shift has RMS 3/√2 over uniform directions in 2-D
    np.testing.assert_allclose(shifted, 3 / np.sqrt(2), rtol=0.05)


def test_sliced_wasserstein_of_samples_of_different_sizes():
    """n ≠ m: the exact integral of the squared difference of the empirical quantile functions."""
    x = jax.random.normal(jax.random.PRNGKey(0), (300, 2))
    key = jax.random.PRNGKey(1)
    # every point twice is the same empirical distribution
    assert float(analytic.sliced_wasserstein(key, x, jnp.concatenate([x, x]))) < 1e-6
    # by hand in 1-D: x = {0, 1}, y = {0, 1, 2} (quantile breakpoints 1/3, 1/2, 2/3):
    # (0−0)² 1/3 + (0−1)² 1/6 + (1−1)² 1/6 + (1−2)² 1/3 = 1/2
    sw = analytic.sliced_wasserstein(key, jnp.array([[0.0], [1.0]]), jnp.array([[0.0], [1.0], [2.0]]))
    np.testing.assert_allclose(float(sw), np.sqrt(0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="one point shape"):
        analytic.sliced_wasserstein(key, x, jnp.zeros((5, 3)))
