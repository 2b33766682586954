"""Defaults of the FFHQ 1024x1024 experiment.

The official score_sde writes this experiment as one self-contained file; its values are the
256px (LSUN) defaults with the differences below. FFHQ is not in tensorflow-datasets: point
`data.path` at a folder of images (`data.source = 'folder'`) or at an .npz file.
"""

import ml_collections

from configs.default_lsun_configs import get_default_configs as _lsun_defaults


def get_default_configs() -> ml_collections.ConfigDict:
    config = _lsun_defaults()

    training = config.training
    training.batch_size = 8
    training.reduce_mean = True
    training.n_jitted_steps = 1

    config.sampling.snr = 0.15

    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 96
    evaluate.batch_size = 1024

    data = config.data
    del data['category']
    data.dataset = 'FFHQ'
    data.source = 'folder'
    data.tfds_name = ''
    data.image_size = 1024

    model = config.model
    model.sigma_max = 1348.
    model.num_scales = 2000
    model.dropout = 0.

    config.optim.amsgrad = False
    return config
