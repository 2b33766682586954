"""Adaptive ODE solves (:func:`solve_ode`, the one home of the ODE sampler's, the likelihood's
and the encoder's integration) with scipy's RK45 step-size rule as a diffrax controller: the
official ODE solves' steps, compiled.

The official sampler and likelihood call ``scipy.integrate.solve_ivp(method='RK45')``. Three
things make diffrax's ``PIDController`` + ``Dopri5`` take other steps at the same rtol/atol,
and up to several times less accurate ones (bench/ode_accuracy.py):

1. diffrax's Dopri5 estimates the local error with another embedded 4th-order pair, whose
   estimate is exactly ⅔ of scipy's (b − b̂ of 1951/21600 … 1/60 against scipy's −71/57600 …
   1/40): at equal tolerance it accepts 1.5× larger errors. ``error_scale`` = 1.5 restores
   scipy's estimate;
2. an accepted step never shrinks the next one (the factor is clipped to ≥ 1), where scipy
   takes factor = min(10, 0.9 e^(−1/5)) ∈ [0.9, 10] and, after a rejection, at most 1;
3. diffrax 0.7's initial step is 0.01 whenever ``dt0`` is None (its Hairer selection is skipped
   for wrapped terms); here it is Hairer's selection (HNW I, §II.4), as scipy's.

With all three, e = rms(error_scale · err / (atol + rtol max(|y₀|, |y₁|))) over the whole state;
accept if e < 1; next h = h · min(10, 0.9 e^(−1/q)) (≤ 1 right after a rejection), or
h · max(0.2, 0.9 e^(−1/q)) on rejection, q the solver's error order (5 for Dopri5): scipy's
steps, to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

Array = jax.Array


def _flat(tree) -> Array:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def rms_norm(tree) -> Array:
    """√(mean of squares) over every element of a pytree (scipy's ``norm`` in ``solve_ivp``)."""
    return jnp.sqrt(jnp.mean(_flat(tree) ** 2))


class ScipyRK45Controller(diffrax.AbstractAdaptiveStepSizeController):
    """Adaptive steps by scipy's RK45 rule (module docstring). State: was the last try rejected."""

    rtol: float
    atol: float
    error_scale: float = 1.0
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    norm: Callable = rms_norm

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        """Hairer's initial step unless ``dt0`` is given (two vector-field evaluations).

        A solve from t0 > t1 runs in diffrax's negated time, where ``func`` is the vector field
        of the original time and the sign is in the control, so the slope in solver time is
        ``func`` times ``terms.contr(t, t + 1)`` (−1 backwards)."""
        if dt0 is None:
            def slope(t, y):
                return terms.prod(func(terms, t, y, args), terms.contr(t, t + 1.0))

            y, f0 = _flat(y0), slope(t0, y0)
            scale = self.atol + self.rtol * jnp.abs(y)
            d0, d1 = self.norm(y / scale), self.norm(_flat(f0) / scale)
            small = (d0 < 1e-5) | (d1 < 1e-5)
            h0 = jnp.minimum(jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1)), t1 - t0)
            y1 = jax.tree.map(lambda a, b: a + h0 * b, y0, f0)
            d2 = self.norm((_flat(slope(t0 + h0, y1)) - _flat(f0)) / scale) / h0
            top = jnp.maximum(d1, d2)
            h1 = jnp.where(top <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                           (0.01 / jnp.maximum(top, 1e-15)) ** (1.0 / error_order))
            dt0 = jax.lax.stop_gradient(jnp.minimum(100 * h0, h1))
        return t0 + dt0, jnp.array(False)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        def scaled(a, b, e):
            b = jnp.where(jnp.isnan(b).any(), a, b)
            return e / (self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))

        err = self.error_scale * self.norm(jax.tree.map(scaled, y0, y1_candidate, y_error))
        err = jax.lax.stop_gradient(err)
        keep = err < 1
        raw = self.safety * jnp.where(err > 0, err, 1.0) ** (-1.0 / error_order)
        grow = jnp.where(err > 0, jnp.minimum(self.factormax, raw), self.factormax)
        grow = jnp.where(controller_state, jnp.minimum(1.0, grow), grow)
        shrink = jnp.where(jnp.isfinite(err), jnp.maximum(self.factormin, raw), self.factormin)
        factor = eqx.internal.nondifferentiable(jnp.where(keep, grow, shrink))
        next_t0 = jnp.where(keep, t1, t0)
        next_t1 = next_t0 + (t1 - t0) * factor.astype(jnp.result_type(t1 - t0))
        return keep, next_t0, next_t1, False, ~keep, diffrax.RESULTS.successful


SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "heun": diffrax.Heun}
# Dopri5 is scipy's RK45 pair, the official code's solver; at equal rtol/atol it took fewer
# steps than Tsit5 on the PF-ODEs of bench/ode_likelihood.py and bench/sampler_overhead.py.
DEFAULT_SOLVER = "dopri5"
# Vector-field evaluations per attempted step (FSAL saves one of the 7 stages of Tsit5 and
# Dopri5) and at start-up (Hairer's initial step: 2; the first FSAL value: 1).
# tests/test_sampling.py counts them.
_EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6, "heun": 2}
_EVALS_AT_START = {"tsit5": 3, "dopri5": 3, "heun": 2}
# Local error estimates relative to scipy's RK45 (ScipyRK45Controller): diffrax's Dopri5 estimate is ⅔
# of scipy's, so ×1.5 gives the official solver's steps. Tsit5 and Heun have no scipy twin.
_ERROR_SCALE = {"tsit5": 1.0, "dopri5": 1.5, "heun": 1.0}


def check_solver(solver: str) -> str:
    """``solver`` if it names an entry of :data:`SOLVERS`, else a ValueError listing them."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {sorted(SOLVERS)}")
    return solver


def solve_ode(
    vector_field: Callable, y0, t0: float, t1: float, rtol: float, atol: float, solver: str,
    max_steps: int = 4096,
):
    """Integrate dy/dt = vector_field(t, y) from t0 to t1 adaptively; returns (y(t1), nfe).

    The one home of the adaptive step control of the ODE sampler, the likelihood and the
    encoder: scipy's RK45 rule and error estimate (:class:`ScipyRK45Controller`), so Dopri5 takes the
    official solver's steps at the same rtol/atol (and is as accurate; BENCHMARKS.md §7).
    """
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: vector_field(t, y)),
        SOLVERS[check_solver(solver)](),
        t0=t0,
        t1=t1,
        dt0=None,
        y0=y0,
        stepsize_controller=ScipyRK45Controller(rtol, atol, _ERROR_SCALE[solver]),
        max_steps=max_steps,
    )
    nfe = _EVALS_AT_START[solver] + _EVALS_PER_STEP[solver] * sol.stats["num_steps"]
    return jax.tree.map(lambda y: y[-1], sol.ys), nfe
