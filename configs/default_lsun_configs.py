"""Shared defaults of the 256x256 experiments (LSUN bedroom / church, CelebA-HQ, FFHQ-256):
the CIFAR-10 defaults with the official LSUN differences.

Experiment files pick the LSUN category with `set_lsun_category`, which keeps
`data.category` and `data.tfds_name` in step.
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs() -> ml_collections.ConfigDict:
    config = _cifar10_defaults()

    training = config.training
    training.batch_size = 64
    training.n_iters = 2400001
    training.snapshot_freq_for_preemption = 5000

    config.sampling.snr = 0.075

    evaluate = config.eval
    evaluate.begin_ckpt = 50
    evaluate.end_ckpt = 96
    evaluate.batch_size = 512
    evaluate.enable_sampling = True

    data = config.data
    data.dataset = 'LSUN'
    data.category = 'bedroom'
    data.tfds_name = 'lsun/bedroom'
    data.image_size = 256

    model = config.model
    model.sigma_max = 378.
    model.num_scales = 2000
    model.dropout = 0.
    return config


def set_lsun_category(config: ml_collections.ConfigDict, category: str) -> None:
    """Select the LSUN scene category ('bedroom', 'church_outdoor', ...) in place."""
    config.data.category = category
    config.data.tfds_name = f'lsun/{category}'


def set_ncsnpp_256_model(model: ml_collections.ConfigDict) -> None:
    """NCSN++ for 256x256 images (LSUN, CelebA-HQ, FFHQ-256): 7 resolutions, 2 blocks each,
    input and output skip pyramids with FIR resampling."""
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'output_skip'
    model.progressive_input = 'input_skip'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.fourier_scale = 16.
    model.conv_size = 3
