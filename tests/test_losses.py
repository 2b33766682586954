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


# A fixed batch (3 samples of 2×2) and per-sample residual c = [[1, 2], [3, 4]]: each test's
# fn cancels the random noise, so the per-sample loss is the reduction of c² whatever the draws:
# mean (1 + 4 + 9 + 16) / 4 = 7.5, or the official ½ × sum = 15 (not 30).
FIXED = jnp.arange(12.0).reshape(3, 2, 2) / 6.0 - 1.0
C = jnp.array([[1.0, 2.0], [3.0, 4.0]])
HAND = {True: 7.5, False: 15.0}


def _dsm_score(sde, likelihood_weighting):
    """s with std s + z = c (λ = std²), or s + z/std = c / g(t) (λ = g², so ℓ = red(c²) too)."""

    def score(x, t):
        mean, std = sde.marginal_prob(FIXED, t)
        noise_score = -sde_lib.batch_mul(1.0 / std**2, x - mean)  # = −z / std
        scale = sde.sde(x, t)[1] if likelihood_weighting else std
        return noise_score + C / scale[:, None, None]

    return score


@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_sde_loss_value_by_hand(reduce_mean, likelihood_weighting):
    sde = sde_lib.VPSDE()
    loss_fn = losses.get_sde_loss_fn(sde, reduce_mean, likelihood_weighting)
    loss = loss_fn(jax.random.PRNGKey(3), _dsm_score(sde, likelihood_weighting), FIXED)
    np.testing.assert_allclose(loss, HAND[reduce_mean], rtol=1e-5)


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_smld_loss_value_by_hand(reduce_mean):
    """ℓ = red((s − target)²) σ_i² with s = target + c / σ_i."""
    sde = sde_lib.VESDE(N=10)
    sigmas = jnp.flip(sde.discrete_sigmas)

    def model_fn(x, labels):
        sigma = sigmas[labels]
        return -sde_lib.batch_mul(1.0 / sigma**2, x - FIXED) + C / sigma[:, None, None]

    loss = losses.get_smld_loss_fn(sde, reduce_mean)(jax.random.PRNGKey(4), model_fn, FIXED)
    np.testing.assert_allclose(loss, HAND[reduce_mean], rtol=1e-5)


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_ddpm_loss_value_by_hand(reduce_mean):
    """ℓ = red((ε̂ − z)²) with ε̂ = z + c."""
    sde = sde_lib.VPSDE(N=100)  # N > β_max = 20: α_i > 0

    def model_fn(x, labels):
        z = sde_lib.batch_mul(1.0 / sde.sqrt_1m_alphas_cumprod[labels],
                              x - sde_lib.batch_mul(sde.sqrt_alphas_cumprod[labels], FIXED))
        return z + C

    loss = losses.get_ddpm_loss_fn(sde, reduce_mean)(jax.random.PRNGKey(5), model_fn, FIXED)
    np.testing.assert_allclose(loss, HAND[reduce_mean], rtol=1e-5)


def test_official_defaults():
    """The official functions' defaults: the continuous DSM with likelihood weighting, mean-reduced
    (training passes the config's values instead); SMLD ½ × sum; DDPM mean."""
    sde, ve = sde_lib.VPSDE(N=10), sde_lib.VESDE(N=10)
    rng = jax.random.PRNGKey(3)
    np.testing.assert_allclose(losses.get_sde_loss_fn(sde)(rng, _dsm_score(sde, True), FIXED), HAND[True],
                               rtol=1e-5)
    # the λ = std² residual under likelihood weighting: red(c² / std²) g² ≠ 7.5
    assert abs(float(losses.get_sde_loss_fn(sde)(rng, _dsm_score(sde, False), FIXED)) - HAND[True]) > 1
    sigmas = jnp.flip(ve.discrete_sigmas)

    def model_fn(x, labels):
        s = sigmas[labels][:, None, None]
        return (C - (x - FIXED) / s) / s

    np.testing.assert_allclose(losses.get_smld_loss_fn(ve)(rng, model_fn, FIXED), HAND[False], rtol=1e-5)


def test_dsm_value_for_zero_score():
    """With s = 0 the λ = std² loss is E‖z‖² = D per sample (reduce_mean: 1)."""
    sde = sde_lib.VESDE()
    loss = losses.get_sde_loss_fn(sde, likelihood_weighting=False)(
        jax.random.PRNGKey(0), lambda x, t: jnp.zeros_like(x), BATCH)
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


# ---------------------------------------------------------------------------- label-conditional
LABELLED, LABELS = GMM.sample_components(jax.random.PRNGKey(0), 4096)


def test_label_dropout_is_per_example_and_has_its_rate():
    keys = jax.random.split(jax.random.PRNGKey(5), 20000)
    labels = jnp.arange(20000) % 3
    dropped = losses.drop_labels(keys, labels, 0.1, 3)
    assert set(np.unique(dropped)) == {0, 1, 2, 3}
    assert abs(float(jnp.mean(dropped == 3)) - 0.1) < 0.01
    assert bool(jnp.all((dropped == labels) | (dropped == 3)))
    alone = jax.vmap(lambda k, y: losses.drop_labels(k, y[None], 0.1, 3)[0])(keys[:64], labels[:64])
    np.testing.assert_array_equal(alone, dropped[:64])  # example i's draw: its own key alone
    np.testing.assert_array_equal(losses.drop_labels(keys, labels, 0.0, 3), labels)
    assert bool(jnp.all(losses.drop_labels(keys, labels, 1.0, 3) == 3))


@pytest.mark.parametrize("sde", [sde_lib.VESDE(), sde_lib.VPSDE()], ids=["ve", "vp"])
def test_exact_conditional_score_minimizes_the_label_dropout_dsm(sde):
    """With labels dropped at rate 0.3, the minimizer over functions of (x, t, y) is
    ∇log p_t(x | c) for a kept label c and ∇log p_t(x) for the null label: the exact
    conditional score beats the mixture score (labels ignored) and a wrong null branch."""
    cond = GMM.conditional_score_fn(sde)
    keys = jax.random.split(jax.random.PRNGKey(1), 16)

    def run(fn, dropout=0.3):
        loss_fn = losses.get_sde_loss_fn(sde, num_classes=3, label_dropout=dropout)
        return jax.vmap(lambda k: loss_fn(k, fn, LABELLED, LABELS))(keys)

    base = run(cond)
    for other in (lambda x, t, y: cond(x, t, jnp.full_like(y, 3)),  # the mixture score
                  lambda x, t, y: cond(x, t, y) * jnp.where(y == 3, 0.8, 1.0)[:, None]):
        diff = run(other) - base
        assert float(jnp.mean(diff)) > 4 * float(jnp.std(diff)) / np.sqrt(len(keys)), diff

    def oracle(x, t, y):  # the labels before dropout: knows more than the network can
        return cond(x, t, LABELS)

    assert bool(jnp.all(run(oracle) < base))  # so labels were dropped ...
    np.testing.assert_array_equal(run(oracle, 0.0), run(cond, 0.0))  # ... and only by dropout
    with pytest.raises(ValueError, match="batches with labels"):
        losses.get_sde_loss_fn(sde, num_classes=3)(keys[0], cond, LABELLED)


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_discrete_losses_pass_the_dropped_labels(dropout):
    """fn ≡ y: the DDPM loss is E(y − z)² = y² + 1 and the SMLD one σ²E(y + z/σ)², so the
    value tells the label the network saw (0 kept, or 3 = null for all)."""
    y = 3.0 if dropout else 0.0
    labels = jnp.zeros(4096, jnp.int32)
    ddpm = losses.get_ddpm_loss_fn(sde_lib.VPSDE(), num_classes=3, label_dropout=dropout)
    value = ddpm(jax.random.PRNGKey(0), lambda x, i, c: jnp.ones_like(x) * c[:, None], LABELLED,
                 labels)
    assert abs(float(value) - (y**2 + 1)) < 0.1
    smld = losses.get_smld_loss_fn(sde_lib.VESDE(sigma_max=1.0), num_classes=3,
                                   label_dropout=dropout)
    zero = smld(jax.random.PRNGKey(0), lambda x, i, c: jnp.zeros_like(x), LABELLED, labels)
    shifted = smld(jax.random.PRNGKey(0), lambda x, i, c: jnp.ones_like(x) * c[:, None], LABELLED,
                   labels)
    assert (float(shifted) > float(zero) + 0.1) == bool(dropout)
