"""Sample-quality metrics from Inception features and logits (pure NumPy, float64).

* FID (Heusel et al. 2017): ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})`` between
  Gaussians fitted to the 2048-d pool features of two image sets.
* Inception score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` from the classifier
  logits, averaged over ``splits`` disjoint chunks. TF-GAN's ``classifier_score_from_logits``,
  which the official score_sde evaluation reports, is ``splits=1``.
* KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, computed on blocks of at most ``max_block_size`` samples and
  averaged over blocks, as TF-GAN's ``kernel_classifier_distance_and_std_from_activations``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

__all__ = [
    "frechet_distance",
    "gaussian_statistics",
    "fid_from_features",
    "inception_score",
    "kid",
]


def _features(f: np.ndarray, name: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must be a (N, D) array of features with N >= 2, got {f.shape}")
    return f


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = _features(features, "features")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``; the last trace is computed
    as ``sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))`` (a symmetric PSD matrix with the same eigenvalues
    as ``S1 S2``), which is exact for covariance matrices and needs no complex ``sqrtm``.
    Shapes: mu (D,), sigma (D, D).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    for name, arr, shape in (("mu2", mu2, (d,)), ("sigma1", s1, (d, d)), ("sigma2", s2, (d, d))):
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {shape} (mu1 is {mu1.shape})")
    sqrt_s1 = _psd_sqrt(s1)
    inner = sqrt_s1 @ s2 @ sqrt_s1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two sets of Inception pool features, (N1, D) and (N2, D).

    With fewer samples than dimensions the covariances S = XᵀX / (N − 1) (X centered) have low
    rank, and the non-zero eigenvalues of S1 S2 are the squared singular values of
    X1 X2ᵀ / √((N1 − 1)(N2 − 1)): then tr (S1 S2)^½ is their sum, computed without any D × D
    matrix (exact, and much cheaper than two D × D eigendecompositions).
    """
    f1, f2 = _features(features1, "features1"), _features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape} vs {f2.shape}")
    if max(len(f1), len(f2)) >= f1.shape[1]:
        return frechet_distance(*gaussian_statistics(f1), *gaussian_statistics(f2))
    x1, x2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n1, n2 = len(f1) - 1, len(f2) - 1
    tr_covmean = np.linalg.svd(x1 @ x2.T / np.sqrt(n1 * n2), compute_uv=False).sum()
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + (x1**2).sum() / n1 + (x2**2).sum() / n2 - 2.0 * tr_covmean)


def inception_score(logits: np.ndarray, splits: int = 10, return_std: bool = False):
    """Inception score ``exp(mean_x KL(p(y|x) || p(y)))`` from logits (N, K).

    ``p(y|x) = softmax(logits)``; ``p(y)`` is the marginal over each of ``splits`` contiguous
    chunks; the score is the mean over chunks (``splits=1``: TF-GAN's single score). Returns the
    float mean, or (mean, std over splits) when ``return_std``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits={splits} must be in [1, N={logits.shape[0]}]")
    scores = []
    for part in np.array_split(logits, splits):
        log_p = log_softmax(part, axis=1)
        log_py = np.log(np.exp(log_p).mean(axis=0))
        kl = (np.exp(log_p) * (log_p - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    mean = float(np.mean(scores))
    return (mean, float(np.std(scores))) if return_std else mean


def _mmd2_block(r: np.ndarray, g: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3 between blocks r (m, d) and g (n, d)."""
    d = r.shape[1]
    m, n = r.shape[0], g.shape[0]
    k_rr = (r @ r.T / d + 1.0) ** 3
    k_gg = (g @ g.T / d + 1.0) ** 3
    k_rg = (r @ g.T / d + 1.0) ** 3
    return float(
        (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
        + (k_gg.sum() - np.trace(k_gg)) / (n * (n - 1))
        - 2.0 * k_rg.mean()
    )


def _block_bounds(n: int, n_blocks: int) -> np.ndarray:
    sizes = np.full(n_blocks, n // n_blocks)
    sizes[n_blocks - n % n_blocks:] += 1  # the last (n % n_blocks) blocks get one more
    return np.concatenate([[0], np.cumsum(sizes)])


def kid(features1: np.ndarray, features2: np.ndarray, max_block_size: int = 1024,
        return_std: bool = False):
    """Kernel Inception Distance between features (N1, D) and (N2, D).

    Both sets are cut into ``ceil(max(N1, N2) / max_block_size)`` nearly equal contiguous blocks;
    the unbiased MMD^2 (cubic polynomial kernel) of each block pair is averaged. Returns the mean,
    or (mean, standard error over blocks; nan for a single block) when ``return_std``.
    """
    f1, f2 = _features(features1, "features1"), _features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape} vs {f2.shape}")
    n_blocks = -(-max(f1.shape[0], f2.shape[0]) // max_block_size)
    if min(f1.shape[0], f2.shape[0]) < 2 * n_blocks:
        raise ValueError(f"too few samples ({f1.shape[0]}, {f2.shape[0]}) for {n_blocks} blocks")
    b1, b2 = _block_bounds(f1.shape[0], n_blocks), _block_bounds(f2.shape[0], n_blocks)
    ests = np.array([_mmd2_block(f1[b1[i]:b1[i + 1]], f2[b2[i]:b2[i + 1]])
                     for i in range(n_blocks)])
    mean = float(ests.mean())
    if not return_std:
        return mean
    std = float(np.sqrt(ests.var(ddof=1) / n_blocks)) if n_blocks > 1 else float("nan")
    return mean, std
