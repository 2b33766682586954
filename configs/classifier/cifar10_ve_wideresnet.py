"""The paper's noise-conditional CIFAR-10 classifier for class-conditional sampling (SPEC §6).

Wide-ResNet-28-10 (36.5M parameters plus the noise embedding) conditioned on log σ through
Gaussian Fourier features, trained with the cross-entropy of ``classifier_lib`` on CIFAR-10
perturbed by the VE SDE of configs/ve/cifar10_ncsnpp_continuous.py (σ from 0.01 to 50, t ~ U(ε,
1)), data in [0, 1] and the official per-channel CIFAR-10 normalization before the per-image
standardization, as the official classifier's input pipeline. The paper does not give the
classifier's optimizer settings; the values here (Adam 2e-4, warm-up 5000, clipping 1, batch
128) are those of the score models.

    python main.py --config configs/classifier/cifar10_ve_wideresnet.py --workdir runs/clf --mode train
"""

from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()

    training = config.training
    training.task = 'classifier'
    training.sde = 'vesde'
    training.continuous = True
    training.eps = 1e-5
    training.snapshot_sampling = False  # a classifier has no samples

    evaluate = config.eval
    evaluate.enable_sampling = False
    evaluate.enable_bpd = False
    evaluate.enable_loss = True

    model = config.model
    model.name = 'wideresnet'
    model.blocks_per_group = 4
    model.channel_multiplier = 10
    model.num_classes = 10
    model.nf = 128
    model.embedding_type = 'fourier'
    model.fourier_scale = 16
    model.ema_rate = 0.999
    model.dropout = 0.
    model.channel_mean = (0.49139968, 0.48215841, 0.44653091)
    model.channel_std = (0.24703223, 0.24348513, 0.26158784)
    return config
