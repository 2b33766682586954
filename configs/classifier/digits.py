"""A small noise-conditional Wide-ResNet classifier of the embedded 8x8 digits (10 classes), for
class-conditional sampling with the score model of configs/digits.py (same VP SDE, same data
scaling to [-1, 1]); trains on CPU in minutes.

    python main.py --config configs/classifier/digits.py --workdir runs/digits_clf --mode train
"""

from configs.digits import get_config as _digits


def get_config():
    config = _digits()

    training = config.training
    training.task = 'classifier'
    training.eps = 1e-3
    training.snapshot_sampling = False

    evaluate = config.eval
    evaluate.enable_sampling = False
    evaluate.enable_bpd = False

    model = config.model
    for key in list(model.keys()):
        if key not in ('sigma_min', 'sigma_max', 'num_scales', 'beta_min', 'beta_max'):
            del model[key]
    model.name = 'wideresnet'
    model.blocks_per_group = 1
    model.channel_multiplier = 2
    model.num_classes = 10
    model.nf = 32
    model.embedding_type = 'positional'  # label 999 t (VP)
    model.fourier_scale = 16
    model.nonlinearity = 'swish'
    model.dropout = 0.
    model.ema_rate = 0.99
    return config
