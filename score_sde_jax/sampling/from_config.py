"""THE one reader of ``config.sampling``: one :class:`Settings` value, and the sampler it names.

Every key is read from the config (each default config carries all of them; a missing one is a
ValueError naming it): no default is written twice. ``config.sampling.method`` picks the sampler:

* ``pc``: :func:`.pc.get_pc_sampler` (``predictor``, ``corrector``, ``snr``, ``n_steps_each``,
  ``probability_flow``, ``noise_removal``);
* ``ode``: :func:`.ode.get_ode_sampler` (``rtol``, ``atol``, ``solver``, ``noise_removal``,
  ``temperature``);
* ``heun``: :func:`.edm.get_heun_sampler` (``num_steps``, ``rho``, ``s_churn``, ``s_tmin``,
  ``s_tmax``, ``s_noise``, ``sigma_min`` (0: σ̃(ε)), ``temperature``);
* ``dpm_solver``: :func:`.dpm_solver.get_dpm_solver_sampler` (``num_steps``, ``order``,
  ``skip_type``, ``lower_order_final``, ``noise_removal``, ``rho``, ``temperature``), or with
  ``adaptive`` the adaptive solver (``order``, ``adaptive_rtol``, ``adaptive_atol``; ``rtol`` /
  ``atol`` are the ODE sampler's).

``cfg_scale`` and ``guidance_interval`` are the classifier-free guidance of a label-conditional
network (:mod:`score_sde_jax.guidance`); every sampler takes the guided score as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from score_sde_jax import sde_lib
from score_sde_jax.sampling.dpm_solver import get_adaptive_dpm_solver_sampler, get_dpm_solver_sampler
from score_sde_jax.sampling.edm import get_heun_sampler
from score_sde_jax.sampling.ode import get_ode_sampler
from score_sde_jax.sampling.pc import get_pc_sampler

METHODS = ("pc", "ode", "heun", "dpm_solver")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The keys of ``config.sampling`` (see the module docstring for who reads which)."""

    method: str
    predictor: str
    corrector: str
    snr: float
    n_steps_each: int
    probability_flow: bool
    noise_removal: bool
    rtol: float
    atol: float
    solver: str
    num_steps: int
    order: int
    skip_type: str
    lower_order_final: bool
    adaptive: bool
    adaptive_rtol: float
    adaptive_atol: float
    rho: float
    s_churn: float
    s_tmin: float
    s_tmax: float
    s_noise: float
    sigma_min: float
    temperature: float
    cfg_scale: float
    guidance_interval: tuple | None

    def pc_kwargs(self) -> dict:
        """Keyword arguments of :func:`get_pc_sampler`, which the PC inpainter, colorizer and
        conditional sampler take as well."""
        return dict(predictor=self.predictor, corrector=self.corrector, snr=self.snr,
                    n_steps=self.n_steps_each, probability_flow=self.probability_flow,
                    denoise=self.noise_removal)

    def ode_kwargs(self) -> dict:
        """rtol, atol and solver of the probability-flow ODE (sampler, encoder, decoder)."""
        return dict(rtol=self.rtol, atol=self.atol, solver=self.solver)


def settings(config) -> Settings:
    """``config.sampling`` as :class:`Settings`; a missing key is a ValueError naming it."""
    s = config.sampling
    values = {}
    for field in dataclasses.fields(Settings):
        if field.name not in s:
            raise ValueError(f"config.sampling.{field.name} is missing (every default config "
                             "sets it: configs/default_cifar10_configs.py)")
        values[field.name] = s[field.name]
    values["method"] = str(values["method"]).lower()
    if values["method"] not in METHODS:
        raise ValueError(f"unknown sampling method {values['method']!r}; valid sampling methods: "
                         f"{sorted(METHODS)} (config.sampling.method)")
    return Settings(**values)


def get_sampling_fn(config, sde: sde_lib.SDE, shape: tuple[int, ...], eps: float) -> Callable:
    """The sampler ``sampler(rng, score_fn) -> (x, nfe)`` of ``config.sampling``."""
    s = settings(config)
    if s.method == "pc":
        if s.temperature != 1.0:
            raise ValueError(f"config.sampling.temperature={s.temperature} scales the prior draw of "
                             "the ode, heun and dpm_solver samplers; the pc sampler has none to "
                             "scale (set config.sampling.method or temperature=1)")
        return get_pc_sampler(sde, shape, eps=eps, **s.pc_kwargs())
    if s.method == "ode":
        return get_ode_sampler(sde, shape, eps=eps, denoise=s.noise_removal,
                               temperature=s.temperature, **s.ode_kwargs())
    if s.method == "heun":
        return get_heun_sampler(sde, shape, s.num_steps, s.rho, s.s_churn, s.s_tmin, s.s_tmax,
                                s.s_noise, eps, s.sigma_min or None, s.temperature)
    if s.adaptive:
        return get_adaptive_dpm_solver_sampler(sde, shape, s.order, s.adaptive_rtol, s.adaptive_atol,
                                               denoise=s.noise_removal, eps=eps,
                                               temperature=s.temperature)
    return get_dpm_solver_sampler(sde, shape, s.num_steps, s.order, str(s.skip_type).lower(),
                                  s.lower_order_final, s.noise_removal, eps, s.rho, s.temperature)


def batch_coupled(config) -> bool:
    """True when a sample of ``config.sampling`` depends on the rest of its batch: the PC
    sampler with the Langevin corrector (step size from batch means) and the adaptive ODE
    solvers (one step size for the batch)."""
    s = settings(config)
    return ((s.method == "pc" and s.corrector == "langevin") or s.method == "ode"
            or (s.method == "dpm_solver" and s.adaptive))
