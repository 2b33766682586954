"""Paths between latents (paper §4.3): linear and spherical interpolation.

``interp(z0, z1, alphas) -> path``: z0, z1 of one shape S, alphas (A,) -> (A, *S), path[0] = z0
at α = 0 and path[-1] = z1 at α = 1. Latents come from :func:`sampling.get_ode_encoder`; the
path decodes with the ODE sampler (``z=path``). Both are re-exported by :mod:`sampling`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def lerp(z0: Array, z1: Array, alphas: Array) -> Array:
    """Linear interpolation (1 − α) z0 + α z1: z0, z1 of one shape S, alphas (A,) -> (A, *S)."""
    z0, z1, a = _interpolation_args(z0, z1, alphas)
    return (1.0 - a) * z0 + a * z1


def slerp(z0: Array, z1: Array, alphas: Array) -> Array:
    """Spherical interpolation: z0, z1 of one shape S, alphas (A,) -> (A, *S).

    With cos θ = ⟨z0, z1⟩ / (‖z0‖ ‖z1‖) over all entries,
    slerp(α) = sin((1 − α) θ) / sin θ · z0 + sin(α θ) / sin θ · z1, the great-circle arc from
    z0 (α = 0) to z1 (α = 1). For ‖z0‖ = ‖z1‖ every point keeps that norm, so a path between two
    Gaussian latents (norm ≈ σ √D in high dimension) stays where the prior puts its mass; the
    linear path's midpoint has norm ≈ σ √(D / 2) for independent latents. Falls back to
    :func:`lerp` where sin θ < 1e-6 (parallel or opposite latents).
    """
    z0, z1, a = _interpolation_args(z0, z1, alphas)
    norms = jnp.linalg.norm(z0) * jnp.linalg.norm(z1)
    cos = jnp.vdot(z0, z1) / jnp.where(norms > 0, norms, 1.0)
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(theta)
    arc = sin >= 1e-6
    safe = jnp.where(arc, sin, 1.0)
    w0 = jnp.where(arc, jnp.sin((1.0 - a) * theta) / safe, 1.0 - a)
    w1 = jnp.where(arc, jnp.sin(a * theta) / safe, a)
    return w0 * z0 + w1 * z1


def _interpolation_args(z0, z1, alphas) -> tuple[Array, Array, Array]:
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    if z0.shape != z1.shape:
        raise ValueError(f"interpolation between latents of shapes {z0.shape} and {z1.shape}; "
                         "they must be equal")
    a = jnp.asarray(alphas, z0.dtype)
    if a.ndim != 1:
        raise ValueError(f"alphas must be a 1-D array, got shape {a.shape}")
    return z0, z1, a.reshape((-1,) + (1,) * z0.ndim)


INTERPOLATIONS: dict[str, Callable[[Array, Array, Array], Array]] = {"slerp": slerp, "linear": lerp}
