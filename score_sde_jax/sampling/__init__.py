"""Samplers (SPEC §4), each a pure function ``sampler(rng, score_fn) -> (x, nfe)`` of a
``score_fn(x, t)``:

* :mod:`.pc` -- predictors (``euler_maruyama``, ``reverse_diffusion``, ``ancestral_sampling``,
  ``none``) and correctors (``langevin``, ``ald``, ``none``) in one ``lax.scan``;
* :mod:`.ode` -- the probability-flow ODE on diffrax (sampler T → ε, encoder ε → T);
* :mod:`.sigma` -- the σ̃ = std/mean parametrization shared by the few-step samplers;
* :mod:`.edm` -- EDM's Heun sampler; :mod:`.dpm_solver` -- DPM-Solver++ (multistep, adaptive);
* :mod:`.interpolation` -- ``slerp``, ``lerp`` between latents;
* :mod:`.from_config` -- the one reader of ``config.sampling`` (:func:`get_sampling_fn`).

Wrap a call in ``jax.jit`` with the network parameters as arguments (not closed over) so the
whole loop compiles once.
"""

from score_sde_jax.sampling.dpm_solver import (  # noqa: F401
    get_adaptive_dpm_solver_sampler,
    get_dpm_solver_sampler,
)
from score_sde_jax.sampling.edm import get_heun_sampler  # noqa: F401
from score_sde_jax.sampling.from_config import (  # noqa: F401
    METHODS,
    Settings,
    batch_coupled,
    get_sampling_fn,
    settings,
)
from score_sde_jax.sampling.interpolation import INTERPOLATIONS, lerp, slerp  # noqa: F401
from score_sde_jax.sampling.ode import get_ode_encoder, get_ode_sampler  # noqa: F401
from score_sde_jax.sampling.pc import (  # noqa: F401
    CORRECTORS,
    PREDICTORS,
    ancestral_sampling,
    annealed_langevin_dynamics,
    euler_maruyama,
    get_pc_sampler,
    langevin,
    langevin_alpha,
    langevin_steps,
    no_update,
    pc_loop,
    predictor_corrector_fns,
    reverse_diffusion,
)
from score_sde_jax.sampling.sigma import (  # noqa: F401
    SKIP_TYPES,
    SigmaSchedule,
    data_prediction,
    data_to_score,
    karras_sigmas,
    noise_to_score,
    score_to_data,
    score_to_noise,
    sigma_grid,
)
