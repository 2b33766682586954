"""Exact answers: a Gaussian mixture, its perturbed marginals p_t under any SDE, their scores.

Every SDE of :mod:`sde_lib` is linear, with kernel x(t) = m(t) x(0) + std(t) z. A mixture
p_0 = Σ_k w_k N(μ_k, Σ_k) therefore stays a mixture:

    p_t(x) = Σ_k w_k N(x; m(t) μ_k, m(t)² Σ_k + std(t)² I),

so ∇ₓ log p_t and log p_t are closed form. Samplers and the likelihood are tested against them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_sde_jax import sde_lib

Array = jax.Array


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k) on ℝᴰ.

    Args:
      weights: (K,) positive, normalized here.
      means: (K, D).
      covs: (K, D, D) symmetric positive definite.
    """

    def __init__(self, weights, means, covs):
        weights = jnp.asarray(weights, dtype=float)
        means = jnp.asarray(means, dtype=float)
        covs = jnp.asarray(covs, dtype=float)
        if means.ndim != 2 or weights.shape != means.shape[:1]:
            raise ValueError(f"weights (K,) and means (K, D) expected, got {weights.shape}, {means.shape}")
        if covs.shape != means.shape + means.shape[-1:]:
            raise ValueError(f"covs must have shape {means.shape + means.shape[-1:]}, got {covs.shape}")
        self.weights = weights / jnp.sum(weights)
        self.means = means
        self.covs = covs
        self.dim = means.shape[-1]

    def sample(self, rng: Array, n: int) -> Array:
        """n samples, shape (n, D)."""
        return self.sample_components(rng, n)[0]

    def sample_components(self, rng: Array, n: int) -> tuple[Array, Array]:
        """n samples and their component labels: (n, D), (n,)."""
        rng_k, rng_z = jax.random.split(rng)
        k = jax.random.categorical(rng_k, jnp.log(self.weights), shape=(n,))
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(rng_z, (n, self.dim))
        return self.means[k] + jnp.einsum("nij,nj->ni", chol[k], z), k

    def component_log_probs(self, x: Array) -> Array:
        """log w_k + log N(x; μ_k, Σ_k), shape (B, K)."""
        return _component_log_probs(x, self.weights, self.means, self.covs)

    def log_prob(self, x: Array) -> Array:
        """log p(x), x: (B, D) -> (B,)."""
        return jax.nn.logsumexp(self.component_log_probs(x), axis=-1)

    def perturbed(self, sde: sde_lib.SDE, t: Array) -> GaussianMixture:
        """The mixture p_t at a scalar time t."""
        t1 = jnp.reshape(jnp.asarray(t, dtype=float), (1,))
        m = sde.mean_coeff(t1)[0]
        std = sde.marginal_prob(jnp.zeros((1, self.dim)), t1)[1][0]
        return GaussianMixture(self.weights, m * self.means, _perturbed_covs(self.covs, m, std))

    def log_prob_t(self, sde: sde_lib.SDE) -> Callable[[Array, Array], Array]:
        """(x (B, D), t (B,)) -> log p_t(x), shape (B,).

        With Σ_k = U_k diag(λ_k) U_kᵀ, the component covariance m² Σ_k + std² I has the same
        eigenvectors and eigenvalues m² λ_k + std², so no factorization happens per call.
        """
        lam, vecs = jnp.linalg.eigh(self.covs)  # (K, D), (K, D, D)

        def log_prob_t(x: Array, t: Array) -> Array:
            m = sde.mean_coeff(t)[:, None, None]  # (B, 1, 1)
            std = sde.marginal_prob(jnp.zeros_like(x), t)[1][:, None, None]
            var = m**2 * lam[None] + std**2  # (B, K, D)
            proj = jnp.einsum("kdj,bkd->bkj", vecs, x[:, None, :] - m * self.means[None])
            maha = jnp.sum(proj**2 / var, axis=-1)
            logdet = jnp.sum(jnp.log(var), axis=-1)
            comp = jnp.log(self.weights)[None] - 0.5 * (maha + logdet + self.dim * np.log(2 * np.pi))
            return jax.nn.logsumexp(comp, axis=-1)

        return log_prob_t

    def score_fn(self, sde: sde_lib.SDE) -> Callable[[Array, Array], Array]:
        """The exact score ∇ₓ log p_t(x): (x (B, D), t (B,)) -> (B, D)."""
        log_prob_t = self.log_prob_t(sde)
        return jax.grad(lambda x, t: jnp.sum(log_prob_t(x, t)))

    def component(self, c: int) -> GaussianMixture:
        """p(x | class c) = N(μ_c, Σ_c): component c alone, as a one-component mixture."""
        return GaussianMixture(jnp.ones((1,)), self.means[c:c + 1], self.covs[c:c + 1])

    def posterior_class(self, x: Array) -> Array:
        """argmax_k p(k | x) = argmax_k w_k N(x; μ_k, Σ_k): the exact Bayes classifier, (B,)."""
        return jnp.argmax(self.component_log_probs(x), axis=-1)

    def conditional_score_fn(self, sde: sde_lib.SDE) -> Callable[[Array, Array, Array], Array]:
        """The exact label-conditional score of classifier-free guidance:
        (x (B, D), t (B,), y (B,) int) -> (B, D).

        For a class y = c < K it is component c's own marginal score
        ∇ log p_t(x | c) = −(m² Σ_c + std² I)⁻¹ (x − m μ_c); for the null label y = K it is the
        mixture score ∇ log p_t(x) = Σ_k p_t(k | x) ∇ log p_t(x | k). Closed form (eigenbasis
        of each Σ_k, as :meth:`log_prob_t`), no automatic differentiation.
        """
        lam, vecs = jnp.linalg.eigh(self.covs)  # (K, D), (K, D, D)
        num = self.weights.shape[0]

        def score(x: Array, t: Array, y: Array) -> Array:
            m = sde.mean_coeff(t)[:, None, None]  # (B, 1, 1)
            std = sde.marginal_prob(jnp.zeros_like(x), t)[1][:, None, None]
            var = m**2 * lam[None] + std**2  # (B, K, D)
            proj = jnp.einsum("kdj,bkd->bkj", vecs, x[:, None, :] - m * self.means[None])
            comp_scores = -jnp.einsum("kdj,bkj->bkd", vecs, proj / var)  # (B, K, D)
            log_r = jnp.log(self.weights)[None] - 0.5 * jnp.sum(proj**2 / var + jnp.log(var), -1)
            mixture = jnp.einsum("bk,bkd->bd", jax.nn.softmax(log_r, axis=-1), comp_scores)
            y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), x.shape[:1])
            own = jnp.take_along_axis(comp_scores, jnp.minimum(y, num - 1)[:, None, None], 1)[:, 0]
            return jnp.where((y == num)[:, None], mixture, own)

        return score

    def conditional(self, known: Array, mask: Array) -> GaussianMixture:
        """p(x_u | x_k = known) for the coordinates where ``mask`` (D,) is 0.

        Each component conditions as a Gaussian; the weights become w_k N(known; μ_k,k, Σ_k,kk),
        normalized. Returns a mixture on the unknown coordinates.
        """
        mask = np.asarray(mask).astype(bool)
        k_idx, u_idx = np.flatnonzero(mask), np.flatnonzero(~mask)
        known = jnp.asarray(known, dtype=float)[k_idx]
        s_kk = self.covs[:, k_idx][:, :, k_idx]
        s_uk = self.covs[:, u_idx][:, :, k_idx]
        s_uu = self.covs[:, u_idx][:, :, u_idx]
        gain = jnp.einsum("kuj,kji->kui", s_uk, jnp.linalg.inv(s_kk))
        diff = known[None] - self.means[:, k_idx]
        means = self.means[:, u_idx] + jnp.einsum("kuj,kj->ku", gain, diff)
        covs = s_uu - jnp.einsum("kuj,kvj->kuv", gain, s_uk)
        logw = _component_log_probs(known[None], self.weights, self.means[:, k_idx], s_kk)[0]
        return GaussianMixture(jax.nn.softmax(logw), means, covs)


def _perturbed_covs(covs: Array, m: Array, std: Array) -> Array:
    eye = jnp.eye(covs.shape[-1])
    return m**2 * covs + std**2 * eye


def _component_log_probs(x: Array, weights: Array, means: Array, covs: Array) -> Array:
    """x (B, D); weights (K,); means (K, D); covs (K, D, D) -> (B, K)."""
    chol = jnp.linalg.cholesky(covs)  # (K, D, D)
    diff = x[:, None, :] - means[None]  # (B, K, D)
    sol = jax.vmap(
        lambda L, d: jax.scipy.linalg.solve_triangular(L, d.T, lower=True).T, in_axes=(0, 1), out_axes=1
    )(chol, diff)
    maha = jnp.sum(sol**2, axis=-1)
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    d = x.shape[-1]
    return jnp.log(weights)[None] - 0.5 * (maha + logdet[None] + d * np.log(2 * np.pi))


def default_mixture(dim: int = 2) -> GaussianMixture:
    """A well-separated mixture with unequal weights and shapes, used by tests and the demo."""
    if dim != 2:
        rng = np.random.default_rng(0)
        means = rng.normal(size=(3, dim)) * 4.0
        covs = np.stack([np.eye(dim) * s for s in (0.3, 0.6, 0.15)])
        return GaussianMixture([0.5, 0.3, 0.2], means, covs)
    means = [[-4.0, -2.0], [3.0, 3.0], [3.5, -3.5]]
    covs = [
        [[1.0, 0.4], [0.4, 0.5]],
        [[0.3, 0.0], [0.0, 0.3]],
        [[0.6, -0.2], [-0.2, 0.2]],
    ]
    return GaussianMixture([0.5, 0.3, 0.2], means, covs)


def sliced_wasserstein(rng: Array, x: Array, y: Array, n_projections: int = 256) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of x: (n, D) and
    y: (m, D) (n and m may differ).

    SW₂² = E_θ W₂²(θᵀx, θᵀy) over directions θ uniform on the sphere (``n_projections`` of them,
    drawn from ``rng``). Each 1-D W₂² is ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du of the two empirical quantile
    functions, which are constant between the breakpoints {i/n} ∪ {j/m}: an exact finite sum
    (for n = m, the mean squared difference of the sorted projections). Returns SW₂ (not
    squared) as a Python float.

    A metric of two finished sample sets, computed on the host in NumPy (float64): XLA's CPU
    sort of the (n, n_projections) projections is ~10× slower than NumPy's. Not traceable.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape[1:] != y.shape[1:] or not len(x) or not len(y):
        raise ValueError(f"sliced_wasserstein needs non-empty samples of one point shape, got "
                         f"{x.shape} and {y.shape}")
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    theta = np.asarray(jax.random.normal(rng, (x.shape[1], n_projections)), np.float64)
    theta = theta / np.linalg.norm(theta, axis=0, keepdims=True)
    px = np.sort(x @ theta, axis=0)
    py = np.sort(y @ theta, axis=0)
    n, m = len(px), len(py)
    if n == m:
        return float(np.sqrt(np.mean((px - py) ** 2)))
    ends = np.unique(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    starts = np.concatenate([[0.0], ends[:-1]])
    mid = (starts + ends) / 2  # inside each interval both quantile functions are constant
    ix, iy = np.floor(mid * n).astype(np.int64), np.floor(mid * m).astype(np.int64)
    width = (ends - starts)[:, None]
    return float(np.sqrt(np.sum(width * (px[ix] - py[iy]) ** 2) / n_projections))
