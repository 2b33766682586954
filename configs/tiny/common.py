"""Shrinks a full experiment config to a CPU-sized one for tests and smoke runs (not itself an
experiment: the tiny_*.py files beside it are).

Every tiny config keeps its parent experiment's SDE, objective, network family and sampler, and
changes only sizes: 16x16 single-channel images of the embedded scikit-learn digits (no
download), nf 16 (DDPM: 32), two resolutions, one residual block each, 50 noise scales (so samplers run
in 50 steps), batches of 8 and checkpoints every 5 steps.
"""

import ml_collections


def shrink(config: ml_collections.ConfigDict, image_size: int = 16) -> ml_collections.ConfigDict:
    """Make ``config`` tiny in place (see the module docstring) and return it."""
    training = config.training
    training.batch_size = 8
    training.n_iters = 11
    training.snapshot_freq = 5
    training.log_freq = 1
    training.eval_freq = 5
    training.snapshot_freq_for_preemption = 5
    training.n_jitted_steps = 1

    config.sampling.n_steps_each = 1

    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 2
    evaluate.batch_size = 8
    evaluate.num_samples = 8

    data = config.data
    data.dataset = 'DIGITS'
    data.source = 'digits'
    data.tfds_name = ''
    data.image_size = image_size
    data.num_channels = 1

    model = config.model
    model.num_scales = 50
    model.nf = 32 if model.name == 'ddpm' else 16  # DDPM's GroupNorm has 32 groups
    if 'ch_mult' in model:  # NCSN++ / DDPM++ / DDPM
        model.ch_mult = (1, 2)
        model.num_res_blocks = 1
        model.attn_resolutions = (image_size // 2,)

    config.optim.warmup = 2
    return config
