"""Checkpoints: the orbax store of training states (:mod:`.store`) and the import of the official
score_sde checkpoints, PyTorch and Flax (:mod:`.official`). One error family (:mod:`.errors`)."""

from score_sde_jax.checkpoints.errors import (  # noqa: F401
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CorruptCheckpointError,
)
from score_sde_jax.checkpoints.official import (  # noqa: F401
    from_official_flax,
    from_official_pytorch,
    load_official_flax,
    load_official_pytorch,
    model_template,
)
from score_sde_jax.checkpoints.store import (  # noqa: F401
    PAUSE_ENV,
    PREEMPTION_DIR,
    SNAPSHOT_DIR,
    Checkpointer,
    all_steps,
    checkpoint_dir,
    config_differences,
    find_checkpoints,
    latest_step,
    load_ema_params,
    read_meta,
    restore,
    restore_latest,
    saved_config,
    step_dirs,
)
