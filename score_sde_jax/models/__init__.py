"""Score networks (Flax) and the registry that builds them from a config.

Every network module is imported here, explicitly: importing it registers its class under the
name ``config.model.name`` uses (``ncsnpp``, ``ddpm``, ``ncsnv2``, ``mlp``, ``wideresnet``,
``mlp_classifier``).
"""

from score_sde_jax.models import (  # noqa: F401 -- registers the networks
    ddpm,
    mlp,
    mlp_classifier,
    ncsnpp,
    ncsnv2,
    wideresnet,
)
from score_sde_jax.models.utils import (  # noqa: F401
    data_shape,
    get_model,
    get_model_fn,
    get_score_fn,
    init_model,
    is_flat,
    register_model,
)
