"""ODE log-likelihood equals the exact mixture log-density (SPEC §5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from score_sde_jax import analytic, likelihood, prng, sde_lib

GMM = analytic.default_mixture()
X = GMM.sample(jax.random.PRNGKey(1), 32)


@pytest.mark.parametrize("sde", [sde_lib.VESDE(), sde_lib.VPSDE(), sde_lib.subVPSDE()],
                         ids=["ve", "vp", "subvp"])
def test_exact_trace_likelihood(sde):
    score = GMM.score_fn(sde)
    lik = likelihood.get_likelihood_fn(sde, hutchinson_type="exact")
    logp, z, nfe = jax.jit(lambda r, x: lik(r, score, x))(jax.random.PRNGKey(0), X)
    assert logp.shape == (32,) and z.shape == X.shape and nfe.shape == (32,)
    err_per_dim = jnp.abs(logp - GMM.log_prob(X)) / 2
    assert float(jnp.mean(err_per_dim)) < 0.01
    # What is left is the prior's mismatch with p_T: with the exact p_T the identity
    # log p_ε(x) = log p_T(z) + ∫ div holds to solver precision.
    exact_identity = (logp - sde.prior_logp(z) + GMM.log_prob_t(sde)(z, jnp.ones(32))
                      - GMM.log_prob_t(sde)(X, jnp.full((32,), 1e-5)))
    assert float(jnp.max(jnp.abs(exact_identity))) / 2 < 1e-3


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind):
    sde = sde_lib.VPSDE()
    score = GMM.score_fn(sde)
    x = X[:4]
    exact = likelihood.get_likelihood_fn(sde, hutchinson_type="exact", rtol=1e-4, atol=1e-4)
    ref, _, _ = exact(jax.random.PRNGKey(0), score, x)
    lik = jax.jit(lambda r: likelihood.get_likelihood_fn(sde, kind, rtol=1e-4, atol=1e-4)(r, score, x)[0])
    reps = jnp.stack([lik(k) for k in jax.random.split(jax.random.PRNGKey(7), 48)])  # (48, 4)
    mean, se = reps.mean(0), reps.std(0) / np.sqrt(reps.shape[0])
    assert bool(jnp.all(se > 0))
    assert bool(jnp.all(jnp.abs(mean - ref) < 3.5 * se + 1e-3)), (mean, ref, se)


def test_bits_per_dim():
    logp = jnp.array([-np.log(2.0) * 3 * 10])
    np.testing.assert_allclose(likelihood.bits_per_dim(logp, 10, offset=8.0), 11.0)
    assert likelihood.bpd_offset(True) == 7.0 and likelihood.bpd_offset(False) == 8.0


def test_likelihood_errors():
    with pytest.raises(ValueError, match="unknown hutchinson_type 'sobol'.*rademacher"):
        likelihood.get_likelihood_fn(sde_lib.VPSDE(), hutchinson_type="sobol")
    lik = likelihood.get_likelihood_fn(sde_lib.VPSDE())
    with pytest.raises(ValueError, match=r"returned shape \(1, 3\) for x of shape \(1, 2\)"):
        lik(jax.random.PRNGKey(0), lambda x, t: jnp.zeros((x.shape[0], 3)), X[:2])


def test_likelihood_as_accurate_as_scipy_rk45(x64):
    """With the batch as one state (the default, as the official code) the likelihood takes
    scipy RK45's steps at equal rtol = atol, so its bits/dim and latent errors are scipy's."""
    sde, tol, x = sde_lib.VPSDE(), 1e-4, GMM.sample(jax.random.PRNGKey(1), 16)
    score = GMM.score_fn(sde)
    rng = jax.random.PRNGKey(0)
    probe = prng.rademacher(rng, x.shape, x.dtype)  # what get_likelihood_fn draws
    ref_logp, ref_z, _ = likelihood.get_likelihood_fn(sde, rtol=1e-9, atol=1e-9)(rng, score, x)
    logp, z, _ = likelihood.get_likelihood_fn(sde, rtol=tol, atol=tol)(rng, score, x)
    drift = sde.reverse(score, probability_flow=True).sde

    @jax.jit
    def aug(t, y):
        f, jvp = jax.jvp(lambda v: drift(v, jnp.full((16,), t))[0], (y[:32].reshape(16, 2),), (probe,))
        return jnp.concatenate([f.reshape(-1), jnp.sum(jvp * probe, axis=1)])

    sol = integrate.solve_ivp(lambda t, y: np.asarray(aug(t, y)), (1e-5, sde.T),
                              np.concatenate([np.asarray(x).reshape(-1), np.zeros(16)]), rtol=tol, atol=tol,
                              method="RK45")
    z_official = sol.y[:32, -1].reshape(16, 2)
    logp_official = np.asarray(sde.prior_logp(jnp.asarray(z_official))) + sol.y[32:, -1]
    err, err_official = np.abs(logp - ref_logp).mean(), np.abs(logp_official - ref_logp).mean()
    assert err <= 1.01 * err_official and err_official > 1e-7, (err, err_official)
    assert float(jnp.abs(z - ref_z).max()) <= 1.01 * np.abs(z_official - ref_z).max()
