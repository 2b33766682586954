"""Shared defaults of the low-dimensional toy experiments (flat data, MLP score network).

Starts from the CIFAR-10 defaults so every key exists, then removes the image-only data keys
(`models.data_shape` reads `data.dim` instead) and scales training down to CPU size.
Toy data are modelled in their own coordinates: `data.centered = False` keeps the data scaler
the identity (no [0, 1] -> [-1, 1] map).
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults
from configs.default_cifar10_configs import set_pc_sampling


def get_default_configs() -> ml_collections.ConfigDict:
    config = _cifar10_defaults()

    training = config.training
    training.batch_size = 512
    training.n_iters = 20001
    training.snapshot_freq = 5000
    training.log_freq = 100
    training.eval_freq = 500
    training.snapshot_freq_for_preemption = 1000
    training.n_jitted_steps = 1
    training.continuous = True
    training.reduce_mean = True

    set_pc_sampling(config.sampling, 'euler_maruyama', 'none')

    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 4
    evaluate.batch_size = 1000
    evaluate.num_samples = 10000
    evaluate.enable_sampling = True

    data = config.data
    for key in ('image_size', 'num_channels', 'tfds_name', 'data_dir', 'path'):
        del data[key]
    data.dataset = 'TOY'
    data.source = 'toy'
    data.dim = 2
    data.toy_eval_size = 10000  # fixed evaluation set; training draws fresh points each step
    data.centered = False
    data.random_flip = False

    model = config.model
    model.name = 'mlp'
    model.nf = 128
    model.num_layers = 3
    model.nonlinearity = 'swish'
    model.embedding_type = 'positional'
    model.fourier_scale = 16.
    model.scale_by_sigma = False
    model.conditional = True
    model.init_scale = 0.
    model.dropout = 0.
    model.ema_rate = 0.999

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100
    return config
