"""ODE log-likelihood equals the exact mixture log-density (SPEC §5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde_jax import analytic, likelihood, sde_lib

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
