"""The embedded default experiment: scikit-learn's 8x8 handwritten digits (1,797 grey images
shipped inside scikit-learn, no download) at their native 8x8 size, one channel.

A small DDPM++ (nf 32, resolutions 8 and 4, one residual block each, attention at 4x4; 0.75M
parameters) trained with the continuous VP SDE on data in [-1, 1], sampled with 1000
Euler-Maruyama steps. On 2 idle CPU cores it runs about 8 steps per second; the loss falls from
1.0 to about 0.1 within 300 steps, when PC samples of the EMA weights already show digits. The
probability-flow samplers (`sampling.method` ode, heun, dpm_solver, or PC with
probability_flow) need more: they start at sigma~ = std/m = 150 (t = T), where a per-pixel bias
b of the network's noise prediction moves the data prediction by 150 b, and b is about 0.03
after 300 steps (saturated noise), 0.01 after 600 (digits); `make demo` trains 800. The EMA
rate is 0.99 (paper: 0.9999) so that the averaged weights follow such a short run (0.995 kept
5% of the untrained weights after 600 steps: ode and dpm_solver 2x farther from the digits).
`--config.data.image_size=16` gives upsampled 16x16 digits (4x the compute; no attention layer
then).

    python main.py --config configs/digits.py --workdir runs/digits --mode train
"""

from configs.default_cifar10_configs import get_default_configs, set_ddpmpp_model, set_pc_sampling


def get_config():
    config = get_default_configs()

    training = config.training
    training.sde = 'vpsde'
    training.continuous = True
    training.reduce_mean = True
    training.batch_size = 64
    training.n_iters = 5001
    training.snapshot_freq = 1000
    training.log_freq = 25
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 250
    training.n_jitted_steps = 1

    set_pc_sampling(config.sampling, 'euler_maruyama', 'none')

    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 5
    evaluate.batch_size = 256
    evaluate.num_samples = 1024
    evaluate.enable_sampling = True

    data = config.data
    data.dataset = 'DIGITS'
    data.source = 'digits'
    data.tfds_name = ''
    data.image_size = 8
    data.num_channels = 1
    data.centered = True
    data.random_flip = False  # digits are not mirror-symmetric

    model = config.model
    set_ddpmpp_model(model)
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)
    model.dropout = 0.
    model.ema_rate = 0.99

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100
    return config
