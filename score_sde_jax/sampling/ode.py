"""The probability-flow ODE (SPEC §4): a sampler T → ε and an encoder ε → T (paper §4.3), both
solved with diffrax (:mod:`score_sde_jax.ode_solver`). Pure: ``sampler(rng, score_fn, z=None)
-> (x, nfe)``, ``encode(score_fn, x) -> (z, nfe)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from score_sde_jax import sde_lib
from score_sde_jax.ode_solver import DEFAULT_SOLVER, check_solver, solve_ode
from score_sde_jax.sampling.pc import reverse_diffusion

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


# --------------------------------------------------------------------------- the ODE sampler
def _pf_vector_field(sde: sde_lib.SDE, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
    """``vf(t, x) = f(x, t) − ½ g(t)² s(x, t)``, the probability-flow drift of a batch x (B, *D)
    at a scalar time t, in diffrax's argument order."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def vf(t, x):
        return rsde.sde(x, jnp.full((x.shape[0],), t))[0]

    return vf


def _solve_each(vf, x: Array, t0: float, t1: float, rtol: float, atol: float, solver: str,
                max_steps: int) -> tuple[Array, Array]:
    """:func:`solve_ode` of each sample of x (B, *D) on its own (``vmap`` of batch-of-one
    solves): (x(t1) (B, *D), nfe (B,))."""

    def one(xi: Array) -> tuple[Array, Array]:
        y, nfe = solve_ode(vf, xi[None], t0, t1, rtol, atol, solver, max_steps)
        return y[0], nfe

    return jax.vmap(one)(x)


def get_ode_sampler(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = DEFAULT_SOLVER,
    eps: float = 1e-3,
    denoise: bool = False,
    max_steps: int = 4096,
    temperature: float = 1.0,
    per_sample: bool = False,
) -> Callable[..., tuple[Array, Array]]:
    """Probability-flow ODE sampler: dx/dt = f − ½ g² s(x, t) from T to ε with diffrax.

    ``sampler(rng, score_fn, z=None) -> (x, nfe)``; ``z`` (shape) replaces the prior draw, which
    is otherwise τ · (a draw of the prior p_T), τ = ``temperature`` (τ < 1: "cooler" samples).
    Given z, this decodes the latents of :func:`get_ode_encoder` (keep ``denoise`` off).
    The whole batch is one ODE state (one step size), as in the official sampler; with
    ``per_sample`` each sample is its own solve (``vmap``, as the encoder), so a sample depends
    on its own latent alone, whatever the batch (``nfe`` is then (B,)). ``denoise`` adds one
    reverse-diffusion step at ε without noise (one more NFE).
    """
    check_solver(solver)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def sampler(rng: Array, score_fn: ScoreFn, z: Array | None = None) -> tuple[Array, Array]:
        score_fn = sde_lib.check_score_fn(score_fn)
        x = temperature * sde.prior_sampling(rng, shape) if z is None else z
        vf = _pf_vector_field(sde, score_fn)
        solve = _solve_each if per_sample else solve_ode
        x, nfe = solve(vf, x, sde.T, eps, rtol, atol, solver, max_steps)
        if denoise:
            _, x = reverse_diffusion(rng, x, jnp.full((shape[0],), eps), score_fn, sde,
                                     sde.reverse(score_fn, probability_flow=False))
            nfe = nfe + 1
        return x, nfe

    return sampler


# --------------------------------------------------------------------------- the ODE encoder
def get_ode_encoder(
    sde: sde_lib.SDE,
    shape: tuple[int, ...],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = DEFAULT_SOLVER,
    eps: float = 1e-3,
    max_steps: int = 4096,
) -> Callable[[ScoreFn, Array], tuple[Array, Array]]:
    """The probability-flow ODE as an encoder (paper §4.3): ``encode(score_fn, x) -> (z, nfe)``.

    Integrates dx/dt = f(x, t) − ½ g(t)² s(x, t) from t = ε to T: x (shape (B, *D), at time ε,
    in model space) ↦ its latent z = x(T) (shape), ``nfe`` (B,) the score evaluations of each
    solve. The map is deterministic and invertible, fixed by the score and the SDE; decoding
    is the ODE sampler started from z, ``get_ode_sampler(sde, shape, rtol, atol, solver,
    eps)(rng, score_fn, z=z)`` (same ε, no ``denoise``), and returns x to solver tolerance.

    Each sample is its own solve (``vmap``, as the likelihood with ``per_sample=True``), not
    one state for the batch as in the sampler: an adaptive step size shared by the batch would
    make an image's latent depend, at the tolerance, on the images beside it, and the encoding
    would not be unique to the image. Per sample, z[i] is a function of x[i] alone (the latent
    the per-sample likelihood returns for it, to tolerance) and its NFE is its own.
    """
    check_solver(solver)
    shape = tuple(shape)

    def encode(score_fn: ScoreFn, x: Array) -> tuple[Array, Array]:
        if tuple(x.shape) != shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, the encoder was built for shape {shape}")
        vf = _pf_vector_field(sde, sde_lib.check_score_fn(score_fn))
        return _solve_each(vf, x, eps, sde.T, rtol, atol, solver, max_steps)

    return encode
