"""Shared defaults of every CIFAR-10 experiment (values of the official score_sde defaults).

The other dataset defaults (CelebA, LSUN, FFHQ, toy) start from this dictionary and override
what differs, so every config carries the keys the code reads (and ml_collections' command-line
overrides, which need existing keys, reach all of them).

Keys beyond the official ones, read by this project:
  sampling.method      'pc' | 'ode' | 'heun' | 'dpm_solver'; the experiment files set it.
  sampling.rtol/atol   tolerances of the probability-flow ODE solver (official: RK45, 1e-5).
  sampling.solver      diffrax solver name for the ODE sampler ('dopri5' is scipy's RK45).
  sampling.num_steps, order, skip_type, lower_order_final, adaptive, adaptive_rtol/atol, rho,
  s_churn, s_tmin, s_tmax, s_noise, sigma_min
                       the few-step samplers 'heun' (2·num_steps − 1 NFE) and 'dpm_solver'
                       (num_steps NFE, + 1 with noise_removal); see score_sde_jax/sampling.py.
  sampling.temperature τ: the ode, heun and dpm_solver samplers start from τ · (a prior draw).
  eval.inception_path  local Inception-v3 weight file for FID / IS / KID ('' = not set).
  eval.ref_stats_path  cached Inception statistics of the data set ('' = under the eval dir).
  eval.quantize        samples -> uint8 before Inception: 'truncate' (official) | 'round' (EDM).
  eval.bpd_num_repeats dequantization repeats of the bits/dim evaluation (official: 5).
  eval.hutchinson_type trace estimator of the likelihood: 'rademacher' | 'gaussian' | 'exact'.
  eval.likelihood_rtol/atol/eps  ODE tolerances and start time of the likelihood (1e-5).
  eval.likelihood_solver         diffrax solver of the likelihood ODE ('dopri5', as the official RK45).
  eval.likelihood_per_sample     True: one ODE solve per image, so its bits/dim do not depend on the
                                 rest of its batch nor on the devices; False: the batch as one state
                                 (the official way, steps shared by the batch).
  training.task        training objective registered in train_lib ('score').
  training.grad_accum_steps  microbatches per update (gradients summed in a lax.scan; 1 = off).
  training.label_dropout     probability that a training label becomes the null label (classifier-
                             free guidance; read when model.num_classes > 0; 0.1 is typical).
  model.num_classes    K > 0: a label-conditional score network (class embedding of K + 1 rows,
                       row K the null label); 0 = unconditional (the official networks).
  sampling.cfg_scale   guidance weight w: s_w = (1 + w) s(x, t, c) − w s(x, t, ∅) (0 = the plain
                       conditional score; score_sde_jax/guidance.py).
  sampling.guidance_interval  (σ_lo, σ_hi): guidance only where σ_lo ≤ std(t)/mean(t) ≤ σ_hi, w = 0
                       elsewhere; the default (0, inf) guides at every noise level.
  model.dtype          compute dtype of the network: 'float32' | 'bfloat16' (parameters, optimizer
                       state and EMA stay float32; see models/layers.get_dtype).
  model.remat          recompute each residual / attention block in the backward pass.
  data.prefetch        batches prepared ahead by a background thread.
  data.source          'tfds' | 'npz' | 'folder' | 'digits' | 'toy'.
  data.tfds_name       tensorflow-datasets name when data.source == 'tfds'.
  data.data_dir        tensorflow-datasets data directory ('' = its default, ~/tensorflow_datasets).
  data.path            file (.npz) or directory (images) when data.source is 'npz' / 'folder'.
  data.skip_bad_files  data.source == 'folder': train without the image files that cannot be
                       decoded or resized (a warning names each) instead of stopping with an
                       error that lists them; every file is checked before the first step.
"""

import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    # extra checkpoints, overwritten in place, to resume after preemption
    training.snapshot_freq_for_preemption = 10000
    # draw samples at every snapshot
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    training.continuous = True
    training.n_jitted_steps = 5
    training.reduce_mean = False
    training.task = 'score'
    training.grad_accum_steps = 1
    training.label_dropout = 0.

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    sampling.rtol = 1e-5
    sampling.atol = 1e-5
    sampling.solver = 'dopri5'
    sampling.num_steps = 20
    sampling.order = 2
    sampling.skip_type = 'logsnr'
    sampling.lower_order_final = True
    sampling.adaptive = False
    sampling.adaptive_rtol = 0.05
    sampling.adaptive_atol = 0.0078
    sampling.rho = 7.0
    sampling.s_churn = 0.0
    sampling.s_tmin = 0.0
    sampling.s_tmax = float('inf')
    sampling.s_noise = 1.0
    sampling.sigma_min = 0.0  # 0: the SDE's sigma at t = eps
    sampling.temperature = 1.0
    sampling.cfg_scale = 0.
    sampling.guidance_interval = (0., float('inf'))

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 9
    evaluate.end_ckpt = 26
    evaluate.batch_size = 1024
    evaluate.enable_sampling = False
    evaluate.num_samples = 50000
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = 'test'
    evaluate.bpd_num_repeats = 5
    evaluate.hutchinson_type = 'rademacher'
    evaluate.likelihood_solver = 'dopri5'
    evaluate.likelihood_per_sample = True
    evaluate.likelihood_rtol = 1e-5
    evaluate.likelihood_atol = 1e-5
    evaluate.likelihood_eps = 1e-5
    evaluate.inception_path = ''
    evaluate.ref_stats_path = ''
    evaluate.quantize = 'truncate'

    config.data = data = ml_collections.ConfigDict()
    data.dataset = 'CIFAR10'
    data.source = 'tfds'
    data.tfds_name = 'cifar10'
    data.data_dir = ''
    data.path = ''
    data.prefetch = 2
    data.skip_bad_files = False
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3

    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 50.
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.
    model.dropout = 0.1
    model.embedding_type = 'fourier'
    model.dtype = 'float32'
    model.remat = False
    model.num_classes = 0

    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.

    config.seed = 42
    return config


def set_ncsnpp_model(model: ml_collections.ConfigDict) -> None:
    """NCSN++ as trained on CIFAR-10 with the VE SDE (paper Table 3 / official ve configs).

    Experiments that change one of these (DDPM++, deep variants, VP / sub-VP NCSN++) override
    the keys after this call.
    """
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'residual'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.fourier_scale = 16.
    model.conv_size = 3


def set_ddpmpp_model(model: ml_collections.ConfigDict) -> None:
    """DDPM++: the NCSN++ network without FIR resampling nor progressive input, with the
    sinusoidal (positional) time embedding, predicting the noise (no division by sigma)."""
    set_ncsnpp_model(model)
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.fir = False
    model.progressive_input = 'none'
    model.embedding_type = 'positional'


def set_ddpm_model(model: ml_collections.ConfigDict) -> None:
    """The DDPM network of Ho et al. (2020) with its CIFAR-10 hyper-parameters."""
    model.name = 'ddpm'
    model.scale_by_sigma = False
    model.ema_rate = 0.9999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True


def set_pc_sampling(sampling: ml_collections.ConfigDict, predictor: str, corrector: str) -> None:
    """Predictor-corrector sampling with the given predictor and corrector names."""
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'
    sampling.predictor = predictor
    sampling.corrector = corrector


def set_ncsn_model(config: ml_collections.ConfigDict, name: str, num_scales: int,
                   ema_rate: float, lr: float) -> None:
    """NCSN (v1, name 'ncsn') / NCSNv2 ('ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256'): RefineNet
    with InstanceNorm++ and ELU, trained with the SMLD loss on discrete noise levels, Adam
    without warm-up nor gradient clipping, sampled by annealed Langevin dynamics ('ald')."""
    config.training.sde = 'vesde'
    config.training.continuous = False
    set_pc_sampling(config.sampling, 'none', 'ald')

    model = config.model
    model.name = name
    model.scale_by_sigma = name != 'ncsn'
    model.num_scales = num_scales
    model.ema_rate = ema_rate
    model.normalization = 'InstanceNorm++'
    model.nonlinearity = 'elu'
    model.nf = 128
    model.interpolation = 'bilinear'

    optim = config.optim
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = lr
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1.
