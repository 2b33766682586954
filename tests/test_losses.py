"""The DSM losses are minimized by the exact score (SPEC §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde_jax import analytic, losses, sde_lib

GMM = analytic.default_mixture()
BATCH = GMM.sample(jax.random.PRNGKey(0), 4096)


def _losses(loss_fn, score_fn, n_rep=16):
    keys = jax.random.split(jax.random.PRNGKey(1), n_rep)
    return jax.vmap(lambda k: loss_fn(k, score_fn, BATCH))(keys)


@pytest.mark.parametrize("sde", [sde_lib.VESDE(), sde_lib.VPSDE(), sde_lib.subVPSDE()],
                         ids=["ve", "vp", "subvp"])
@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_exact_score_minimizes_dsm(sde, likelihood_weighting):
    loss_fn = losses.get_sde_loss_fn(sde, likelihood_weighting=likelihood_weighting)
    score = GMM.score_fn(sde)
    base = _losses(loss_fn, score)
    for scale in (0.9, 1.1):
        # Same rng keys: a paired comparison, so the Monte-Carlo error is that of the difference.
        diff = _losses(loss_fn, lambda x, t, s=scale: s * score(x, t)) - base
        se = jnp.std(diff) / np.sqrt(diff.shape[0])
        assert float(jnp.mean(diff)) > 4 * float(se), (scale, diff)


def test_reduce_mean_vs_sum():
    sde = sde_lib.VPSDE()
    score = GMM.score_fn(sde)
    key = jax.random.PRNGKey(3)
    mean = losses.get_sde_loss_fn(sde, reduce_mean=True)(key, score, BATCH)
    total = losses.get_sde_loss_fn(sde, reduce_mean=False)(key, score, BATCH)
    np.testing.assert_allclose(total, 2 * mean, rtol=1e-5)


def test_dsm_value_for_zero_score():
    """With s = 0 the default loss is E‖z‖² = D per sample (reduce_mean: 1)."""
    sde = sde_lib.VESDE()
    loss = losses.get_sde_loss_fn(sde)(jax.random.PRNGKey(0), lambda x, t: jnp.zeros_like(x), BATCH)
    np.testing.assert_allclose(loss, 1.0, atol=0.05)


def test_smld_loss_minimized_by_exact_score():
    sde = sde_lib.VESDE(N=100)
    loss_fn = losses.get_smld_loss_fn(sde)
    # label i indexes the descending σ table; the perturbed law has σ = sigmas[N-1-i].
    sigmas = jnp.flip(sde.discrete_sigmas)
    score = GMM.score_fn(sde)
    t_of = lambda i: jnp.log(sigmas[i] / sde.sigma_min) / jnp.log(sde.sigma_max / sde.sigma_min)  # noqa: E731
    model_fn = lambda x, i: score(x, t_of(i))  # noqa: E731
    base = _losses(loss_fn, model_fn)
    for scale in (0.9, 1.1):
        diff = _losses(loss_fn, lambda x, i, s=scale: s * model_fn(x, i)) - base
        assert float(jnp.mean(diff)) > 4 * float(jnp.std(diff) / np.sqrt(16))


def test_ddpm_loss_minimized_by_exact_noise_prediction():
    sde = sde_lib.VPSDE(N=100)
    loss_fn = losses.get_ddpm_loss_fn(sde)
    def eps_hat(x, labels):
        # perturbed law at step i: mean √ᾱ_i μ, cov ᾱ_i Σ + (1−ᾱ_i) I — a GMM score
        a = sde.alphas_cumprod[labels]

        def one(xi, ai):
            g = analytic.GaussianMixture(GMM.weights, jnp.sqrt(ai) * GMM.means,
                                         ai * GMM.covs + (1 - ai) * jnp.eye(2))
            return jax.grad(lambda v: g.log_prob(v[None])[0])(xi)

        return -jnp.sqrt(1 - a)[:, None] * jax.vmap(one)(x, a)

    base = _losses(loss_fn, eps_hat, n_rep=8)
    for scale in (0.9, 1.1):
        diff = _losses(loss_fn, lambda x, i, s=scale: s * eps_hat(x, i), n_rep=8) - base
        assert float(jnp.mean(diff)) > 4 * float(jnp.std(diff) / np.sqrt(8))


def test_discrete_losses_reject_wrong_sde():
    with pytest.raises(ValueError, match="needs a VESDE"):
        losses.get_smld_loss_fn(sde_lib.VPSDE())
    with pytest.raises(ValueError, match="needs a VPSDE"):
        losses.get_ddpm_loss_fn(sde_lib.subVPSDE())
