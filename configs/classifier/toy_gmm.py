"""A noise-conditional MLP classifier of the 2-D Gaussian mixture of configs/toy_gmm.py, whose
classes are the mixture components (VP SDE, as the score model of that config).

The exact classifier p_t(y | x) of this mixture is known
(``classifier_lib.mixture_class_logp_fn``); tests/test_classifier.py trains this config for a few
hundred steps and compares it with that Bayes classifier.

    python main.py --config configs/classifier/toy_gmm.py --workdir runs/gmm_clf --mode train
"""

from configs.toy_gmm import get_config as _toy_gmm


def get_config():
    config = _toy_gmm()

    training = config.training
    training.task = 'classifier'
    training.eps = 1e-3
    training.batch_size = 256
    training.n_iters = 2001
    training.snapshot_sampling = False

    evaluate = config.eval
    evaluate.enable_sampling = False
    evaluate.enable_bpd = False

    model = config.model
    model.name = 'mlp_classifier'
    model.num_classes = 3
    model.nf = 64
    model.num_layers = 2
    model.embedding_type = 'positional'  # label 999 t (VP)
    model.ema_rate = 0.99

    config.optim.lr = 3e-3
    config.optim.warmup = 20
    return config
