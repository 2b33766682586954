"""Score networks (Flax) and the registry that builds them from a config."""

from score_sde_jax.models.utils import (  # noqa: F401
    data_shape,
    get_model,
    get_model_fn,
    get_score_fn,
    init_model,
    register_model,
)
