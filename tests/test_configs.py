"""Every experiment config: imports, carries the keys the project reads, keeps the official
score_sde values, builds its network with the official parameter count, and the tiny / toy /
digits configs run a forward pass."""

import importlib
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # configs/ is imported from the repository root, as by main.py
    sys.path.insert(0, str(ROOT))

from score_sde_jax import guidance, likelihood, ode_solver, sampling, sde_lib  # noqa: E402
from score_sde_jax.models import utils  # noqa: E402

HELPER_FILES = {'common.py', '__init__.py'}


def _experiment_files() -> list[str]:
    files = []
    for path in sorted((ROOT / 'configs').rglob('*.py')):
        if path.name in HELPER_FILES or path.name.startswith('default_'):
            continue
        files.append(path.relative_to(ROOT / 'configs').with_suffix('').as_posix())
    return files


ALL_CONFIGS = _experiment_files()
# Score-model experiments; configs/classifier/ holds noise-conditional classifiers (another
# task, other model keys), which only the import test below covers here.
EXPERIMENTS = [n for n in ALL_CONFIGS if not n.startswith('classifier/')]


def load(name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of configs/<name>.py."""
    return importlib.import_module('configs.' + name.replace('/', '.')).get_config()


REQUIRED = {
    'training': ['batch_size', 'n_iters', 'snapshot_freq', 'log_freq', 'eval_freq',
                 'snapshot_freq_for_preemption', 'snapshot_sampling', 'likelihood_weighting',
                 'continuous', 'reduce_mean', 'sde', 'n_jitted_steps', 'task', 'label_dropout'],
    'sampling': ['method', 'predictor', 'corrector', 'n_steps_each', 'noise_removal',
                 'probability_flow', 'snr', 'rtol', 'atol', 'solver', 'cfg_scale',
                 'guidance_interval'],
    'eval': ['begin_ckpt', 'end_ckpt', 'batch_size', 'enable_sampling', 'num_samples',
             'enable_loss', 'enable_bpd', 'bpd_dataset', 'bpd_num_repeats', 'inception_path',
             'ref_stats_path', 'hutchinson_type', 'likelihood_rtol', 'likelihood_atol',
             'likelihood_eps', 'quantize'],
    'data': ['dataset', 'source', 'centered', 'uniform_dequantization', 'random_flip', 'prefetch',
             'skip_bad_files'],
    'model': ['name', 'sigma_min', 'sigma_max', 'num_scales', 'beta_min', 'beta_max', 'dropout',
              'ema_rate', 'scale_by_sigma', 'embedding_type', 'num_classes'],
    'optim': ['weight_decay', 'optimizer', 'lr', 'beta1', 'eps', 'warmup', 'grad_clip'],
}
SOURCES = {'tfds', 'npz', 'folder', 'digits', 'toy'}


def test_every_official_experiment_file_is_present():
    expected = {
        've/cifar10_ncsnpp', 've/cifar10_ncsnpp_continuous', 've/cifar10_ncsnpp_deep_continuous',
        've/cifar10_ddpm', 'vp/cifar10_ddpmpp', 'vp/cifar10_ddpmpp_continuous',
        'vp/cifar10_ddpmpp_deep_continuous', 'vp/cifar10_ncsnpp', 'vp/cifar10_ncsnpp_continuous',
        'vp/ddpm/cifar10', 'vp/ddpm/cifar10_continuous', 'subvp/cifar10_ddpmpp_continuous',
        'subvp/cifar10_ddpmpp_deep_continuous', 'subvp/cifar10_ncsnpp_continuous',
        'subvp/cifar10_ncsnpp_deep_continuous', 've/celebahq_256_ncsnpp_continuous',
        've/ffhq_256_ncsnpp_continuous', 've/ffhq_ncsnpp_continuous',
        've/bedroom_ncsnpp_continuous', 've/church_ncsnpp_continuous', 've/ncsn/cifar10',
        've/ncsnv2/cifar10', 'vp_cifar10', 'toy_gmm', 'digits', 'tiny/tiny_ncsnpp',
        'tiny/tiny_ddpmpp',
    }
    assert expected <= set(EXPERIMENTS), sorted(expected - set(EXPERIMENTS))


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_every_config_file_imports(name):
    config = load(name)
    assert isinstance(config, ml_collections.ConfigDict)
    assert {'training', 'sampling', 'eval', 'data', 'model', 'optim', 'seed'} <= set(config.keys())


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_config_has_the_keys_the_project_reads(name):
    config = load(name)
    assert isinstance(config, ml_collections.ConfigDict)
    for section, keys in REQUIRED.items():
        missing = [k for k in keys if k not in config[section]]
        assert not missing, f'{name}: config.{section} lacks {missing}'
    assert isinstance(config.seed, int)

    data = config.data
    assert data.source in SOURCES
    if data.source == 'toy':
        assert data.dim >= 1 and 'image_size' not in data
    else:
        assert data.image_size > 0 and data.num_channels in (1, 3)
    if data.source == 'tfds':
        assert data.tfds_name
    if data.source in ('npz', 'folder'):
        assert 'path' in data

    # names resolve to real components: SDE, sampler parts, network class
    sde, _ = sde_lib.get_sde(config)
    assert sde.N == config.model.num_scales
    assert sampling.settings(config).method in sampling.METHODS  # every key is there
    assert config.sampling.predictor in sampling.PREDICTORS
    assert config.sampling.corrector in sampling.CORRECTORS
    assert config.sampling.solver in ode_solver.SOLVERS
    assert config.eval.hutchinson_type in likelihood.HUTCHINSON_TYPES
    assert utils.get_model(config).config is config
    # classifier-free guidance keys (score_sde_jax/guidance.py): valid, unconditional by default
    assert utils.num_classes(config) >= 0 and 0 <= config.training.label_dropout <= 1
    assert config.sampling.cfg_scale >= 0
    assert guidance.check_interval(config.sampling.guidance_interval)
    if name in ('toy_gmm_cfg', 'digits_cfg'):  # label-conditional, label dropout of Ho & Salimans
        assert config.model.num_classes > 0 and config.training.label_dropout == 0.1
    else:
        assert config.model.num_classes == 0 and config.sampling.cfg_scale == 0


# Values of the official score_sde files (yang-song/score_sde, configs/), key by key.
OFFICIAL_DEFAULTS = {
    'training.batch_size': 128, 'training.n_iters': 1300001, 'training.snapshot_freq': 50000,
    'training.log_freq': 50, 'training.eval_freq': 100,
    'training.snapshot_freq_for_preemption': 10000, 'training.snapshot_sampling': True,
    'training.likelihood_weighting': False, 'training.n_jitted_steps': 5,
    'sampling.n_steps_each': 1, 'sampling.noise_removal': True, 'sampling.probability_flow': False,
    'sampling.snr': 0.16, 'eval.begin_ckpt': 9, 'eval.end_ckpt': 26, 'eval.batch_size': 1024,
    'eval.enable_sampling': False, 'eval.num_samples': 50000, 'eval.enable_loss': True,
    'eval.enable_bpd': False, 'eval.bpd_dataset': 'test', 'data.dataset': 'CIFAR10',
    'data.image_size': 32, 'data.random_flip': True, 'data.uniform_dequantization': False,
    'data.num_channels': 3, 'model.sigma_min': 0.01, 'model.sigma_max': 50,
    'model.num_scales': 1000, 'model.beta_min': 0.1, 'model.beta_max': 20., 'model.dropout': 0.1,
    'optim.weight_decay': 0, 'optim.optimizer': 'Adam', 'optim.lr': 2e-4, 'optim.beta1': 0.9,
    'optim.eps': 1e-8, 'optim.warmup': 5000, 'optim.grad_clip': 1., 'seed': 42,
    'data.tfds_name': 'cifar10', 'data.source': 'tfds',
}
NCSNPP = {'model.name': 'ncsnpp', 'model.normalization': 'GroupNorm', 'model.nonlinearity': 'swish',
          'model.nf': 128, 'model.ch_mult': (1, 2, 2, 2), 'model.attn_resolutions': (16,),
          'model.resamp_with_conv': True, 'model.conditional': True, 'model.fir_kernel': (1, 3, 3, 1),
          'model.skip_rescale': True, 'model.resblock_type': 'biggan', 'model.progressive': 'none',
          'model.progressive_combine': 'sum', 'model.attention_type': 'ddpm',
          'model.init_scale': 0., 'model.fourier_scale': 16, 'model.conv_size': 3}
NCSNPP_VE = {**NCSNPP, 'model.scale_by_sigma': True, 'model.ema_rate': 0.999, 'model.fir': True,
             'model.progressive_input': 'residual', 'training.sde': 'vesde',
             'data.centered': False, 'sampling.method': 'pc',
             'sampling.predictor': 'reverse_diffusion', 'sampling.corrector': 'langevin',
             'training.reduce_mean': False}
NCSNPP_VP = {**NCSNPP, 'model.scale_by_sigma': False, 'model.ema_rate': 0.9999, 'model.fir': True,
             'model.progressive_input': 'residual', 'model.embedding_type': 'positional',
             'training.continuous': True, 'training.reduce_mean': True, 'data.centered': True,
             'sampling.predictor': 'euler_maruyama', 'sampling.corrector': 'none'}
DDPMPP = {**NCSNPP, 'model.scale_by_sigma': False, 'model.ema_rate': 0.9999, 'model.fir': False,
          'model.progressive_input': 'none', 'model.embedding_type': 'positional',
          'training.reduce_mean': True, 'data.centered': True, 'sampling.method': 'pc'}
DDPM = {'model.name': 'ddpm', 'model.normalization': 'GroupNorm', 'model.nonlinearity': 'swish',
        'model.nf': 128, 'model.ch_mult': (1, 2, 2, 2), 'model.num_res_blocks': 2,
        'model.attn_resolutions': (16,), 'model.resamp_with_conv': True,
        'model.conditional': True}
NCSN = {'optim.lr': 1e-3, 'training.sde': 'vesde', 'training.continuous': False, 'sampling.predictor': 'none',
        'sampling.corrector': 'ald', 'model.normalization': 'InstanceNorm++',
        'model.nonlinearity': 'elu', 'model.nf': 128, 'model.interpolation': 'bilinear',
        'optim.warmup': 0, 'optim.grad_clip': -1., 'optim.amsgrad': False}
NCSNPP_256 = {'model.name': 'ncsnpp', 'model.scale_by_sigma': True, 'model.ema_rate': 0.999,
              'model.nf': 128, 'model.ch_mult': (1, 1, 2, 2, 2, 2, 2), 'model.num_res_blocks': 2,
              'model.attn_resolutions': (16,), 'model.fir': True, 'model.progressive': 'output_skip',
              'model.progressive_input': 'input_skip', 'model.embedding_type': 'fourier',
              'training.sde': 'vesde', 'training.continuous': True, 'training.batch_size': 64,
              'training.n_iters': 2400001, 'training.snapshot_freq_for_preemption': 5000,
              'sampling.snr': 0.075, 'sampling.predictor': 'reverse_diffusion',
              'sampling.corrector': 'langevin', 'eval.begin_ckpt': 50, 'eval.end_ckpt': 96,
              'eval.batch_size': 512, 'eval.enable_sampling': True, 'data.image_size': 256,
              'model.num_scales': 2000, 'model.dropout': 0.}

OFFICIAL = {
    've/cifar10_ncsnpp': {**NCSNPP_VE, 'training.continuous': False, 'model.num_res_blocks': 4,
                          'model.embedding_type': 'positional'},
    've/cifar10_ncsnpp_continuous': {**NCSNPP_VE, 'training.continuous': True,
                                     'model.num_res_blocks': 4, 'model.embedding_type': 'fourier'},
    've/cifar10_ncsnpp_deep_continuous': {**NCSNPP_VE, 'training.continuous': True,
                                          'model.num_res_blocks': 8, 'training.n_iters': 950001,
                                          'model.embedding_type': 'fourier'},
    've/cifar10_ddpm': {**DDPM, 'training.sde': 'vesde', 'training.continuous': False,
                        'model.scale_by_sigma': True, 'model.ema_rate': 0.999,
                        'sampling.predictor': 'reverse_diffusion', 'sampling.corrector': 'langevin',
                        'data.centered': False},
    'vp/cifar10_ddpmpp': {**DDPMPP, 'training.sde': 'vpsde', 'training.continuous': False,
                          'model.num_res_blocks': 4, 'sampling.predictor': 'ancestral_sampling',
                          'sampling.corrector': 'none'},
    'vp/cifar10_ddpmpp_continuous': {**DDPMPP, 'training.sde': 'vpsde', 'training.continuous': True,
                                     'model.num_res_blocks': 4,
                                     'sampling.predictor': 'euler_maruyama',
                                     'sampling.corrector': 'none'},
    'vp/cifar10_ddpmpp_deep_continuous': {**DDPMPP, 'training.sde': 'vpsde',
                                          'training.continuous': True, 'model.num_res_blocks': 8,
                                          'training.n_iters': 950001,
                                          'sampling.predictor': 'euler_maruyama'},
    'vp/cifar10_ncsnpp': {**NCSNPP_VP, 'training.sde': 'vpsde', 'training.continuous': False,
                          'model.num_res_blocks': 4, 'sampling.predictor': 'reverse_diffusion'},
    'vp/cifar10_ncsnpp_continuous': {**NCSNPP_VP, 'training.sde': 'vpsde',
                                     'model.num_res_blocks': 4},
    'vp/ddpm/cifar10': {**DDPM, 'training.sde': 'vpsde', 'training.continuous': False,
                        'training.reduce_mean': True, 'model.scale_by_sigma': False,
                        'model.ema_rate': 0.9999, 'data.centered': True,
                        'sampling.predictor': 'ancestral_sampling', 'sampling.corrector': 'none'},
    'vp/ddpm/cifar10_continuous': {**DDPM, 'training.sde': 'vpsde', 'training.continuous': True,
                                   'training.reduce_mean': True, 'model.ema_rate': 0.9999,
                                   'sampling.predictor': 'euler_maruyama'},
    'vp/ddpm/cifar10_unconditional': {**DDPM, 'model.conditional': False,
                                      'training.continuous': False},
    'subvp/cifar10_ddpmpp_continuous': {**DDPMPP, 'training.sde': 'subvpsde',
                                        'training.continuous': True, 'model.num_res_blocks': 4,
                                        'sampling.predictor': 'euler_maruyama',
                                        'sampling.corrector': 'none'},
    'subvp/cifar10_ddpmpp_deep_continuous': {**DDPMPP, 'training.sde': 'subvpsde',
                                             'model.num_res_blocks': 8,
                                             'training.n_iters': 950001},
    'subvp/cifar10_ncsnpp_continuous': {**NCSNPP_VP, 'training.sde': 'subvpsde',
                                        'model.num_res_blocks': 4},
    'subvp/cifar10_ncsnpp_deep_continuous': {**NCSNPP_VP, 'training.sde': 'subvpsde',
                                             'model.num_res_blocks': 8,
                                             'training.n_iters': 950001},
    'subvp/cifar10_ddpm_continuous': {**DDPM, 'training.sde': 'subvpsde',
                                      'training.reduce_mean': True, 'data.centered': True},
    've/ncsn/cifar10': {**NCSN, 'model.name': 'ncsn', 'model.sigma_max': 1., 'model.num_scales': 10,
                        'model.ema_rate': 0., 'sampling.n_steps_each': 100, 'sampling.snr': 0.316,
                        'model.scale_by_sigma': False},
    've/ncsn/cifar10_5': {**NCSN, 'model.name': 'ncsn', 'model.sigma_max': 1.,
                          'model.num_scales': 10, 'model.ema_rate': 0.999,
                          'sampling.n_steps_each': 100, 'sampling.snr': 0.316},
    've/ncsn/cifar10_124': {**NCSN, 'model.name': 'ncsn', 'model.sigma_max': 50.,
                            'model.num_scales': 232, 'model.ema_rate': 0.,
                            'sampling.n_steps_each': 5, 'sampling.snr': 0.176},
    've/ncsn/cifar10_1245': {**NCSN, 'model.name': 'ncsn', 'model.num_scales': 232,
                             'model.ema_rate': 0.999, 'sampling.n_steps_each': 5,
                             'sampling.snr': 0.176},
    've/ncsn/celeba_124': {**NCSN, 'model.name': 'ncsn', 'model.sigma_max': 90.,
                           'model.num_scales': 500, 'sampling.snr': 0.128,
                           'data.image_size': 64, 'data.dataset': 'CELEBA'},
    've/ncsnv2/cifar10': {**NCSN, 'model.name': 'ncsnv2_64', 'model.scale_by_sigma': True,
                          'model.num_scales': 232, 'model.ema_rate': 0.999, 'optim.lr': 1e-4,
                          'sampling.n_steps_each': 5, 'sampling.snr': 0.176},
    've/ncsnv2/celeba': {**NCSN, 'model.name': 'ncsnv2_64', 'optim.lr': 1e-4, 'model.num_scales': 500,
                         'model.sigma_max': 90., 'sampling.snr': 0.128, 'data.image_size': 64,
                         'eval.begin_ckpt': 1, 'eval.enable_sampling': True},
    've/ncsnv2/bedroom': {**NCSN, 'model.name': 'ncsnv2_128', 'optim.lr': 1e-4, 'model.sigma_max': 190.,
                          'model.num_scales': 1086, 'model.ema_rate': 0.9999,
                          'training.batch_size': 128, 'sampling.n_steps_each': 3,
                          'sampling.snr': 0.095, 'data.image_size': 128,
                          'data.category': 'bedroom'},
    've/bedroom_ncsnpp_continuous': {**NCSNPP_256, 'model.sigma_max': 378.,
                                     'data.category': 'bedroom', 'data.tfds_name': 'lsun/bedroom'},
    've/church_ncsnpp_continuous': {**NCSNPP_256, 'model.sigma_max': 380.,
                                    'data.category': 'church_outdoor',
                                    'data.tfds_name': 'lsun/church_outdoor'},
    've/celebahq_256_ncsnpp_continuous': {**NCSNPP_256, 'model.sigma_max': 348.,
                                          'data.dataset': 'CelebAHQ'},
    've/ffhq_256_ncsnpp_continuous': {**NCSNPP_256, 'model.sigma_max': 348., 'data.dataset': 'FFHQ'},
    've/ffhq_ncsnpp_continuous': {
        'training.batch_size': 8, 'training.n_iters': 2400001, 'training.reduce_mean': True,
        'training.snapshot_freq_for_preemption': 5000, 'sampling.snr': 0.15,
        'eval.begin_ckpt': 1, 'eval.end_ckpt': 96, 'eval.batch_size': 1024,
        'data.dataset': 'FFHQ', 'data.image_size': 1024, 'model.sigma_max': 1348.,
        'model.num_scales': 2000, 'model.ema_rate': 0.9999, 'model.nf': 16,
        'model.ch_mult': (1, 2, 4, 8, 16, 32, 32, 32), 'model.num_res_blocks': 1,
        'model.dropout': 0., 'model.progressive': 'output_skip',
        'model.progressive_input': 'input_skip', 'optim.amsgrad': False},
    'vp/ddpm/bedroom': {**DDPM, 'model.ch_mult': (1, 1, 2, 2, 4, 4), 'optim.lr': 2e-5,
                        'model.num_scales': 1000, 'data.image_size': 256, 'data.centered': True},
}
CIFAR10_FILES = [n for n in OFFICIAL
                 if n.startswith(('ve/cifar10', 'vp/cifar10', 'subvp/', 'vp/ddpm/cifar10',
                                  've/ncsn/cifar10', 've/ncsnv2/cifar10'))]


def _get(config, dotted: str):
    value = config
    for part in dotted.split('.'):
        value = value[part]
    return value


def _same(a, b) -> bool:
    if isinstance(b, (tuple, list)):
        return tuple(a) == tuple(b)
    if isinstance(b, float):
        return a == pytest.approx(b)
    return a == b


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_official_values(name):
    config = load(name)
    expected = dict(OFFICIAL[name])
    if name in CIFAR10_FILES:  # keeps every official CIFAR-10 default it does not override
        expected = {**OFFICIAL_DEFAULTS, **expected}
    wrong = {k: (_get(config, k), v) for k, v in expected.items() if not _same(_get(config, k), v)}
    assert not wrong, f'{name}: (got, official) {wrong}'


def test_vp_cifar10_is_ddpmpp_continuous_vp():
    assert load('vp_cifar10').to_dict() == load('vp/cifar10_ddpmpp_continuous').to_dict()


def test_configs_are_independent_copies():
    a = load('ve/cifar10_ncsnpp_continuous')
    a.model.nf = 7
    assert load('ve/cifar10_ncsnpp_continuous').model.nf == 128


_COUNTS: dict = {}


def _param_count(config) -> int:
    """Parameters of the network of ``config`` (shapes only: nothing is materialised). Cached
    on the model section and data shape: experiments sharing a network are traced once."""
    shape = utils.data_shape(config)
    key = (json.dumps(config.model.to_dict(), sort_keys=True), shape, config.training.continuous)
    if key not in _COUNTS:
        model = utils.get_model(config)
        x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
        labels = jax.ShapeDtypeStruct((1,), jnp.float32 if key[2] else jnp.int32)
        variables = jax.eval_shape(
            lambda x, y: model.init(jax.random.PRNGKey(0), x, y, train=False), x, labels)
        _COUNTS[key] = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))
    return _COUNTS[key]


# /work/shared/parity/README.md: counts of the official PyTorch models built from these configs.
OFFICIAL_PARAM_COUNTS = {
    've/cifar10_ncsnpp': 62_693_251,
    've/cifar10_ncsnpp_continuous': 62_758_915,
    've/cifar10_ncsnpp_deep_continuous': 107_587_075,
    've/cifar10_ddpm': 35_218_947,
    'vp/cifar10_ddpmpp': 61_804_419,
    'vp/cifar10_ddpmpp_continuous': 61_804_419,
    'vp/cifar10_ddpmpp_deep_continuous': 106_632_579,
    'vp/cifar10_ncsnpp_continuous': 62_693_251,
    'vp/ddpm/cifar10': 35_218_947,
    'subvp/cifar10_ddpmpp_continuous': 61_804_419,
    'subvp/cifar10_ddpmpp_deep_continuous': 106_632_579,
    'subvp/cifar10_ncsnpp_continuous': 62_693_251,
    've/celebahq_256_ncsnpp_continuous': 65_574_549,
    've/ffhq_256_ncsnpp_continuous': 65_574_549,
    've/ffhq_ncsnpp_continuous': 105_785_896,
    've/bedroom_ncsnpp_continuous': 65_574_549,
    've/church_ncsnpp_continuous': 65_574_549,
    'vp_cifar10': 61_804_419,
}


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAM_COUNTS))
def test_parameter_count_matches_official(name):
    assert _param_count(load(name)) == OFFICIAL_PARAM_COUNTS[name]


def _random_variables(model, x, labels, seed: int = 0):
    """Variables of ``model`` with the init's structure, filled with N(0, 0.05²) from NumPy
    (building them by ``model.init`` costs a long XLA compile on CPU)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), abstract)


def _labels_for(config, batch: int) -> jax.Array:
    sde, eps = sde_lib.get_sde(config)
    t = jnp.linspace(eps, sde.T, batch)
    if config.training.sde == 'vesde':
        if config.training.continuous:
            return sde.marginal_prob(jnp.zeros((batch, 1)), t)[1]
        return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
    return t * 999 if config.training.continuous else jnp.round(t * (sde.N - 1)).astype(jnp.int32)


SMALL = sorted([n for n in EXPERIMENTS if n.startswith('tiny/')]
               + ['digits', 'digits_cfg', 'toy_gmm', 'toy_gmm_cfg'])


@pytest.mark.parametrize('name', SMALL)
def test_small_config_runs_a_forward_pass(name):
    config = load(name)
    model = utils.get_model(config)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, *utils.data_shape(config))),
                    jnp.float32)
    labels = _labels_for(config, 3)
    variables = _random_variables(model, x, labels)
    forward = utils.compile_once(lambda v, x, y: model.apply(v, x, y, train=False), variables, x, labels)
    out = forward(variables, x, labels)
    assert out.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.std(out)) > 0


def test_tiny_configs_keep_their_parent_experiment():
    pairs = {'tiny/tiny_ncsnpp': 've/cifar10_ncsnpp_continuous',
             'tiny/tiny_ddpmpp': 'vp/cifar10_ddpmpp_continuous',
             'tiny/tiny_ddpm': 'vp/ddpm/cifar10', 'tiny/tiny_ncsnv2': 've/ncsnv2/cifar10'}
    same = ['training.sde', 'training.continuous', 'training.reduce_mean', 'model.name',
            'model.scale_by_sigma', 'model.embedding_type', 'data.centered', 'sampling.predictor',
            'sampling.corrector']
    for tiny, parent in pairs.items():
        t, p = load(tiny), load(parent)
        for key in same:
            assert _get(t, key) == _get(p, key), (tiny, key)
        assert t.data.source == 'digits' and t.model.nf <= 32 and t.model.num_scales == 50
        assert _param_count(t) < 1_000_000


def test_digits_config_is_small_and_offline():
    config = load('digits')
    assert (config.data.source, config.data.image_size, config.data.num_channels) == ('digits', 8, 1)
    assert not config.data.random_flip  # digits are not mirror-symmetric
    assert 500_000 < _param_count(config) < 1_000_000
    assert config.model.ema_rate <= 0.99  # EMA weights must follow a few-hundred-step run


def test_toy_gmm_config_describes_a_valid_mixture():
    config = load('toy_gmm')
    data = config.data
    k = len(data.gmm_weights)
    assert np.asarray(data.gmm_means).shape == (k, data.dim)
    assert len(data.gmm_stds) == k and min(data.gmm_stds) > 0
    assert abs(sum(data.gmm_weights) - 1) < 1e-9
    assert utils.data_shape(config) == (2,)
    # sigma_max covers the largest pairwise distance between modes (NCSN technique 1)
    means = np.asarray(data.gmm_means)
    assert config.model.sigma_max >= np.max(np.linalg.norm(means[:, None] - means[None], axis=-1))
