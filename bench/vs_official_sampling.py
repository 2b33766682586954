"""The sampling rows of ``bench/vs_official.py``: the project's predictor-corrector and
probability-flow ODE samplers of a case's config, their network-call counts, the per-NFE pairs
and their table. The official side is ``bench/official_worker.py``.

- ``pc``: ``sampling.get_sampling_fn`` of the config (its ``config.sampling`` predictor,
  corrector, snr, ``n_steps_each``, ``noise_removal``) on the config's SDE with ``steps`` steps
  instead of ``model.num_scales``: the same predictor / corrector as the official
  ``sampling.get_sampling_fn``, so the same network calls (N with corrector ``none``, 2N with one
  Langevin step).
- ``ode``: the same config with ``sampling.method = 'ode'``, rtol = atol = ``tol`` (the
  official sampler takes scipy's RK45, the project's diffrax's Dopri5 with scipy's step rule),
  from the latent ``z`` the official sampler starts from too. Adaptive solvers may take other
  step counts, so the row compares the time per network evaluation (NFE).

Each sampler is jitted with the weights as an argument (as the project's evaluation runs it);
the call returns the sampler's own NFE output. :func:`counted_nfe` checks that output against
the network calls actually made (a host callback in the score function, in a separately
compiled copy: the timed sampler has none).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import jax
import numpy as np

from score_sde_jax import eval_lib, sampling, sde_lib


def sampling_config(config, call: str, steps: int, tol: float):
    """A copy of ``config`` for the ``pc`` row (``steps`` steps) or the ``ode`` row (rtol = atol
    = ``tol``)."""
    config = copy.deepcopy(config)
    if call == "pc":
        config.model.num_scales = steps
    else:
        config.sampling.method = "ode"
        config.sampling.rtol = config.sampling.atol = tol
    return config


def project_sampler(config, call: str, steps: int, tol: float, z: np.ndarray,
                    wrap: Callable = lambda score_fn: score_fn) -> Callable:
    """Jitted ``sample(variables, rng) -> (x, nfe)`` of the ``pc`` or ``ode`` row; ``wrap`` is
    applied to the score function."""
    config = sampling_config(config, call, steps, tol)
    sde, eps = sde_lib.get_sde(config)
    sampler = sampling.get_sampling_fn(config, sde, tuple(z.shape), eps)
    build = eval_lib.score_fn_builder(config, sde)
    if call == "pc":
        return jax.jit(lambda variables, rng: sampler(rng, wrap(build(variables))))
    return jax.jit(lambda variables, rng, z: sampler(rng, wrap(build(variables)), z=z))


def counted_nfe(config, call: str, steps: int, tol: float, z: np.ndarray, variables: dict
                ) -> tuple[int, int, bool]:
    """(network calls made, NFE the sampler returned, all sample values finite) of one ``call``
    sample, counted by a host callback in the score function (a separately compiled copy of the
    sampler)."""
    count = [0]

    def bump():
        count[0] += 1

    def wrap(score_fn):
        def counting(x, t):
            jax.debug.callback(bump)
            return score_fn(x, t)
        return counting

    fn = project_sampler(config, call, steps, tol, z, wrap)
    args = (variables, jax.random.PRNGKey(1)) + ((z,) if call == "ode" else ())
    x, nfe = jax.block_until_ready(fn(*args))
    jax.effects_barrier()
    return count[0], int(np.max(nfe)), bool(np.isfinite(np.asarray(x)).all())


def sampling_calls(config, variables: dict, steps: int, tol: float, z: np.ndarray,
                   calls: list[str]) -> dict[str, Callable[[], int]]:
    """The project's ``pc`` / ``ode`` calls among ``calls``, each returning its NFE output."""
    out, key = {}, [jax.random.PRNGKey(0)]
    zj = jax.numpy.asarray(z)

    def caller(fn, *extra):
        def call():
            key[0], rng = jax.random.split(key[0])
            _, nfe = jax.block_until_ready(fn(variables, rng, *extra))
            return int(np.max(nfe))
        return call

    for call in calls:
        fn = project_sampler(config, call, steps, tol, z)
        out[call] = caller(fn, zj) if call == "ode" else caller(fn)
    return out


def prior_latent(config, shape: tuple[int, ...]) -> np.ndarray:
    """A draw of the config's prior p_T (NHWC), the ODE row's start on both sides."""
    sde, _ = sde_lib.get_sde(config)
    return np.asarray(sde.prior_sampling(jax.random.PRNGKey(2), shape))


def nfe_pairs(official, case: str, what: str, mine: Callable[[], int], n: int,
              seconds: Callable) -> dict:
    """Warm-up call of each, then n interleaved pairs: ratios official / project of the wall and
    CPU seconds per NFE (official NFE: the network calls counted in the worker; project: its
    sampler's NFE output)."""
    first = official.ask(cmd="time", case=case, what=what)
    mine()
    out = {"ratios": [], "cpu_ratios": [], "official": [], "project": [], "nfe_o": set(),
           "nfe_p": set(), "nfe_reported": {first["nfe_reported"]}, "finite": first["finite"]}
    for _ in range(n):
        answer = official.ask(cmd="time", case=case, what=what)
        nfe = []
        wall, cpu = seconds(lambda into=nfe: into.append(mine()))
        per_o, per_p = answer["seconds"] / answer["nfe"], wall / nfe[0]
        out["ratios"].append(per_o / per_p)
        out["cpu_ratios"].append((answer["cpu"] / answer["nfe"]) / (cpu / nfe[0]))
        out["official"].append(per_o)
        out["project"].append(per_p)
        out["nfe_o"].add(answer["nfe"])
        out["nfe_p"].add(nfe[0])
        out["nfe_reported"].add(answer["nfe_reported"])
        out["finite"] = out["finite"] and answer["finite"]
    return out


def _nfes(values: set) -> str:
    return "/".join(str(v) for v in sorted(values))


def sampling_row(name: str, what: str, setting: str, n: int, r: dict, check: str,
                 ratio_cell: Callable) -> list[str]:
    """One row of :data:`HEADER`."""
    return [name, what, setting, str(n), _nfes(r["nfe_o"]), _nfes(r["nfe_p"]), check,
            f"{1e3 * np.median(r['official']):.4g}", f"{1e3 * np.median(r['project']):.4g}",
            ratio_cell(r["ratios"]), ratio_cell(r["cpu_ratios"])]


HEADER = ["network", "call", "steps / tol", "pairs", "NFE official", "NFE project",
          "project NFE counted", "official ms/NFE", "project ms/NFE", "official/project per NFE",
          "same, CPU time"]

NOTES = [
    "pc: sampling.get_sampling_fn of the config on both sides (DDPM++: Euler-Maruyama, corrector "
    "none; NCSN++: reverse diffusion + one Langevin step, 2 NFE a step), the config's SDE with "
    "'steps' steps instead of num_scales, denoised (x_mean) output",
    "ode: probability-flow ODE, official scipy solve_ivp RK45 (host round trip each NFE), project "
    "diffrax Dopri5 with scipy's step rule, rtol = atol = tol, same start latent, + 1 denoising NFE",
    "NFE official: network calls counted in the worker (the official PC sampler reports "
    "N (n_steps_each + 1) whatever the corrector, its ODE sampler leaves out the denoising call)",
    "project NFE counted: calls made / NFE output of one untimed sample of a separately compiled "
    "copy with a host callback in the score function ('-': not checked)",
]
