"""Two-dimensional toy distributions: samplers ``(rng, n) -> (points (n, 2), labels (n,))``.

``gmm`` is :class:`score_sde_jax.analytic.GaussianMixture` (exact scores and densities known),
the others are the usual shapes of the score-matching / flow literature: ``checkerboard``
(uniform on the dark squares of a 4x4 board on [-4, 4]^2), ``two_moons`` (two interleaved half
circles, centred and scaled to about [-2, 2] x [-1, 1.5]) and ``swiss_roll`` (a 2-D spiral,
about [-2.8, 2.8]^2). Labels: the mixture component, the moon, or 0.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from score_sde_jax.analytic import GaussianMixture

ToySampler = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]

# A well-separated mixture with unequal weights, used when the config gives none.
DEFAULT_GMM = {
    "gmm_weights": (0.2, 0.3, 0.5),
    "gmm_means": ((-2.0, -1.0), (2.0, -1.0), (0.0, 2.0)),
    "gmm_stds": (0.3, 0.3, 0.3),
}

_DATASET_TO_TOY = {"TOY": "gmm", "GMM": "gmm", "CHECKERBOARD": "checkerboard",
                   "TWO_MOONS": "two_moons", "MOONS": "two_moons", "SWISS_ROLL": "swiss_roll"}


def gaussian_mixture_from_config(data_config):
    """``analytic.GaussianMixture`` from ``data.gmm_weights / gmm_means / gmm_stds``.

    ``gmm_stds`` holds one isotropic standard deviation per component (covariance std^2 I).
    """
    spec = {k: data_config.get(k, None) or v for k, v in DEFAULT_GMM.items()}
    means = np.asarray(spec["gmm_means"], np.float64)
    stds = np.asarray(spec["gmm_stds"], np.float64)
    weights = np.asarray(spec["gmm_weights"], np.float64)
    if means.ndim != 2 or stds.shape != means.shape[:1] or weights.shape != means.shape[:1]:
        raise ValueError(
            "config.data.gmm_means must be (K, D) with gmm_weights and gmm_stds of length K; "
            f"got shapes {means.shape}, {weights.shape}, {stds.shape}")
    covs = stds[:, None, None] ** 2 * np.eye(means.shape[1])
    return GaussianMixture(weights, means, covs)


def _gmm_sampler(data_config) -> ToySampler:
    mixture = gaussian_mixture_from_config(data_config)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        key = jax.random.PRNGKey(int(rng.integers(2**31)))
        x, k = mixture.sample_components(key, n)
        return np.asarray(x, np.float32), np.asarray(k, np.int32)

    return sample


def _checkerboard(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.mod(np.floor(x1), 2)
    return (2.0 * np.stack([x1, x2], axis=1)).astype(np.float32), np.zeros(n, np.int32)


def _noise(data_config) -> float:
    return float(data_config.get("toy_noise", 0.05))


def _two_moons_sampler(data_config) -> ToySampler:
    noise = _noise(data_config)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        label = rng.integers(0, 2, n)
        theta = rng.uniform(0.0, np.pi, n)
        upper = np.stack([np.cos(theta), np.sin(theta)], axis=1)
        lower = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
        x = np.where(label[:, None] == 0, upper, lower) + noise * rng.standard_normal((n, 2))
        return (2.0 * (x - [0.5, 0.25])).astype(np.float32), label.astype(np.int32)

    return sample


def _swiss_roll_sampler(data_config) -> ToySampler:
    noise = _noise(data_config)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, n))
        x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0
        x = x + noise * rng.standard_normal((n, 2))
        return x.astype(np.float32), np.zeros(n, np.int32)

    return sample


_SAMPLERS = {
    "gmm": _gmm_sampler,
    "checkerboard": lambda data_config: _checkerboard,
    "two_moons": _two_moons_sampler,
    "swiss_roll": _swiss_roll_sampler,
}


def toy_name(data_config) -> str:
    """``data.toy`` if set, else derived from ``data.dataset`` ('GMM', 'TOY' -> 'gmm', ...)."""
    name = data_config.get("toy", None) or _DATASET_TO_TOY.get(str(data_config.dataset).upper())
    if name not in _SAMPLERS:
        raise ValueError(
            f"config.data.toy={name!r} (data.dataset={data_config.dataset!r}) is not a toy "
            f"distribution; choose one of {sorted(_SAMPLERS)}")
    return name


def get_toy_sampler(data_config) -> ToySampler:
    """The sampler ``(rng, n) -> (x (n, 2) float32, labels (n,) int32)`` named by the config."""
    return _SAMPLERS[toy_name(data_config)](data_config)
