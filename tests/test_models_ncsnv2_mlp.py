"""NCSN / NCSNv2 (RefineNet) and the MLP score network: structure, shapes, noise conditioning."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configs.toy_gmm import get_config as toy_gmm_config  # noqa: E402
from configs.ve.ncsn.cifar10 import get_config as ncsn_cifar10_config  # noqa: E402
from configs.ve.ncsnv2.bedroom import get_config as ncsnv2_bedroom_config  # noqa: E402
from configs.ve.ncsnv2.cifar10 import get_config as ncsnv2_cifar10_config  # noqa: E402
from score_sde_jax.models import layers, utils  # noqa: E402
from score_sde_jax.models import ncsnv2_layers as nl  # noqa: E402


def _random_variables(model, x, labels, seed=0, scale=0.05):
    """Variables with ``model.init``'s structure, N(0, scale²) from NumPy (no init compile)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: (scale * rng.standard_normal(a.shape)).astype(a.dtype), abstract)


def _count(variables) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))


def _abstract_count(config) -> int:
    model = utils.get_model(config)
    shape = utils.data_shape(config)
    variables = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32), train=False))
    return _count(variables)


# ------------------------------------------------- parameter count from the PyTorch definition
def _torch_refinenet_count(nf: int, channels: int, stages, refine, levels: int = 0) -> int:
    """Parameters of the score_sde_pytorch / ermongroup NCSN(v2) RefineNet, counted from its
    layer list: stages = [(width mult, dilation)], refine = RefineBlock width mults (deepest
    first). ``levels`` > 0: NCSNv1, every norm embeds (γ, α, β) for each of the levels and the
    RefineNet parts are normalised too."""

    def conv(k, cin, cout, bias=True):
        return k * k * cin * cout + (cout if bias else 0)

    def norm(c):  # InstanceNorm++: alpha, gamma, beta
        return 3 * c * (levels or 1)

    def res_block(cin, cout, down, dil):
        shortcut = conv(3, cin, cout) if dil > 1 else conv(1, cin, cout)
        if down:
            return norm(cin) + conv(3, cin, cin) + norm(cin) + conv(3, cin, cout) + shortcut
        return (norm(cin) + conv(3, cin, cout) + norm(cout) + conv(3, cout, cout)
                + (shortcut if cin != cout else 0))

    def rcu(c, n_blocks):
        return n_blocks * 2 * (conv(3, c, c, bias=False) + (norm(c) if levels else 0))

    def crp(c):
        return 2 * (conv(3, c, c, bias=False) + (norm(c) if levels else 0))

    def refine_block(ins, f, start, end):
        n = sum(rcu(c, 2) for c in ins) + crp(f) + rcu(f, 3 if end else 1)
        if not start:
            n += sum(conv(3, c, f) + (norm(c) if levels else 0) for c in ins)
        return n

    total = conv(3, channels, nf) + norm(nf) + conv(3, nf, channels)
    widths, cin = [], nf
    for i, (mult, dil) in enumerate(stages):
        total += res_block(cin, mult * nf, i > 0, dil) + res_block(mult * nf, mult * nf, False, dil)
        cin = mult * nf
        widths.append(cin)
    prev = None
    for k, (w, r) in enumerate(zip(reversed(widths), refine, strict=True)):
        ins = [w] if prev is None else [w, prev]
        total += refine_block(ins, r * nf, prev is None, k == len(widths) - 1)
        prev = r * nf
    return total


def test_ncsnv2_cifar10_has_the_original_architecture():
    config = ncsnv2_cifar10_config()
    expected = _torch_refinenet_count(128, 3, [(1, 1), (2, 1), (2, 2), (2, 4)], [2, 2, 1, 1])
    assert expected == 29_694_083
    assert _abstract_count(config) == expected


def test_ncsnv2_128_and_256_variants():
    config = ncsnv2_bedroom_config()
    config.model.nf = 8
    assert utils.get_model(config).__class__.__name__ == 'NCSNv2_128'
    assert _abstract_count(config) == _torch_refinenet_count(
        8, 3, [(1, 1), (2, 1), (2, 1), (4, 2), (4, 4)], [4, 2, 2, 1, 1])
    config.data.image_size = 256
    config.model.name = 'ncsnv2'  # picks the variant from the image size
    assert _abstract_count(config) == _torch_refinenet_count(
        8, 3, [(1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4)], [4, 2, 2, 2, 1, 1])
    model = utils.get_model(config)
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    out = jax.eval_shape(lambda x, y: model.apply(
        model.init(jax.random.PRNGKey(0), x, y, train=False), x, y, train=False), x, labels)
    assert out.shape == (1, 256, 256, 3)
    config.data.image_size = 512
    with pytest.raises(ValueError, match='image_size=512'):
        _abstract_count(config)


def test_ncsn_v1_counts_a_conditional_norm_per_noise_level():
    config = ncsn_cifar10_config()  # 10 noise levels
    config.model.nf = 16
    expected = _torch_refinenet_count(16, 3, [(1, 1), (2, 1), (2, 2), (2, 4)], [2, 2, 1, 1],
                                      levels=10)
    assert _abstract_count(config) == expected


def _tiny(config, nf=8, size=16):
    config.model.nf = nf
    config.data.image_size = size
    return config


def test_ncsnv2_is_unconditional_and_divides_by_sigma():
    config = _tiny(ncsnv2_cifar10_config())  # 232 levels from 50 to 0.01
    model = utils.get_model(config)
    x1 = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 16, 16, 3)), jnp.float32)
    x = jnp.concatenate([x1, x1, x1 * 0.5])
    labels = jnp.array([0, 117, 231], jnp.int32)
    variables = _random_variables(model, x, labels)
    # also capture the network's last convolution (top-level Conv_1): its output before the
    # division by sigma
    out, state = jax.jit(lambda v: model.apply(
        v, x, labels, train=False, capture_intermediates=lambda mdl, _: mdl.name == 'Conv_1'))(
        variables)
    raw = state['intermediates']['Conv_1']['__call__'][0]
    assert out.shape == raw.shape == x.shape

    sigmas = layers.get_sigmas(config)
    assert sigmas[0] == pytest.approx(50.0) and sigmas[-1] == pytest.approx(0.01)
    np.testing.assert_allclose(out * sigmas[np.asarray(labels)][:, None, None, None], raw,
                               rtol=1e-5, atol=1e-7)
    # The same input at two noise levels: outputs differ exactly by the factor σ_j / σ_i.
    np.testing.assert_allclose(out[0] * sigmas[0], out[1] * sigmas[117], rtol=1e-5, atol=1e-7)
    assert not np.allclose(raw[0], raw[2], atol=1e-4)  # and it does see its input


def test_ncsn_v1_output_depends_on_the_noise_level():
    config = _tiny(ncsn_cifar10_config())
    model = utils.get_model(config)
    x1 = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 16, 16, 3)), jnp.float32)
    x, labels = jnp.concatenate([x1, x1]), jnp.array([0, 9], jnp.int32)
    out = jax.jit(lambda v: model.apply(v, x, labels, train=False))(
        _random_variables(model, x, labels, scale=0.2))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3


def test_labels_map_to_noise_levels():
    config = ncsnv2_cifar10_config()
    sigmas = layers.get_sigmas(config)
    idx = jnp.array([0, 5, 231], jnp.int32)
    np.testing.assert_allclose(nl.label_sigmas(idx, config), sigmas[np.asarray(idx)], rtol=1e-6)
    np.testing.assert_array_equal(nl.label_indices(idx, config), idx)
    # float labels are σ values (continuous VE): returned as they are / mapped to the nearest level
    sig = jnp.asarray(sigmas[np.asarray(idx)] * np.array([1.0, 1.001, 0.999]), jnp.float32)
    np.testing.assert_allclose(nl.label_sigmas(sig, config), sig)
    np.testing.assert_array_equal(nl.label_indices(sig, config), idx)


def test_instance_norm_plus_normalises_each_channel():
    x = jnp.asarray(np.random.default_rng(2).normal(3.0, 2.0, size=(2, 5, 5, 4)), jnp.float32)
    norm = nl.InstanceNorm2dPlus()
    variables = {'params': {'alpha': jnp.zeros(4), 'gamma': jnp.ones(4), 'beta': jnp.zeros(4)}}
    h = norm.apply(variables, x)
    np.testing.assert_allclose(jnp.mean(h, axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(h, axis=(1, 2)), 1.0, rtol=1e-3)
    # α re-injects the standardised channel means: mean of channel c becomes α (μ_c − μ̄)/s
    variables['params']['alpha'] = jnp.ones(4)
    means = jnp.mean(x, axis=(1, 2))
    expected = (means - means.mean(-1, keepdims=True)) / jnp.sqrt(
        jnp.var(means, axis=-1, ddof=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(jnp.mean(norm.apply(variables, x), axis=(1, 2)), expected, atol=1e-4)


def test_align_corners_resize():
    x = jnp.arange(3.0).reshape(1, 1, 3, 1)
    up = nl.resize_align_corners(x, (1, 5))
    np.testing.assert_allclose(up[0, 0, :, 0], [0.0, 0.5, 1.0, 1.5, 2.0])
    assert nl.resize_align_corners(x, (1, 3)) is x


def test_bad_normalization_or_interpolation_is_named():
    config = _tiny(ncsnv2_cifar10_config())
    config.model.normalization = 'BatchNorm'
    with pytest.raises(ValueError, match='config.model.normalization'):
        _abstract_count(config)
    config = _tiny(ncsn_cifar10_config())
    config.model.normalization = 'GroupNorm'
    with pytest.raises(ValueError, match='noise-conditional'):
        _abstract_count(config)
    config = _tiny(ncsnv2_cifar10_config())
    config.model.interpolation = 'bicubic'
    with pytest.raises(ValueError, match='config.model.interpolation'):
        _abstract_count(config)


# ------------------------------------------------------------------------------------- MLP
def _mlp_config(**model):
    config = toy_gmm_config()
    config.model.nf = 32
    config.model.num_layers = 2
    config.model.update(model)
    return config


def test_mlp_flat_and_image_inputs():
    config = _mlp_config()
    model = utils.get_model(config)
    for shape in [(4, 2), (4, 3, 3, 2)]:
        x = jnp.asarray(np.random.default_rng(3).normal(size=shape), jnp.float32)
        labels = jnp.array([0.0, 1.0, 500.0, 999.0])
        variables = _random_variables(model, x, labels, scale=0.3)
        out = model.apply(variables, x, labels, train=False)
        assert out.shape == shape
        # conditioned on the label: same x, other labels, other outputs
        other = model.apply(variables, x, labels[::-1], train=False)
        assert float(jnp.max(jnp.abs(out - other))) > 1e-4


def test_mlp_init_through_the_registry_uses_data_dim():
    config = _mlp_config()
    variables = jax.eval_shape(lambda: utils.init_model(jax.random.PRNGKey(0), config))
    assert variables['params']['Dense_2']['kernel'].shape == (2, 32)  # input layer sees D = 2
    assert variables['params']['Dense_0']['kernel'].shape == (32, 128)  # time embedding nf → 4·nf


def test_mlp_scale_by_sigma_divides_by_sigma():
    config = _mlp_config(embedding_type='fourier', scale_by_sigma=False)
    model = utils.get_model(config)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 2)), jnp.float32)
    sigma = jnp.array([0.01, 1.0, 10.0])
    variables = _random_variables(model, x, sigma, scale=0.3)
    raw = model.apply(variables, x, sigma, train=False)
    config.model.scale_by_sigma = True
    scaled = utils.get_model(config).apply(variables, x, sigma, train=False)
    np.testing.assert_allclose(scaled * sigma[:, None], raw, rtol=1e-5, atol=1e-7)
    # integer labels are SMLD indices: index 0 is σ_max
    idx = jnp.zeros((3,), jnp.int32)
    by_index = utils.get_model(config).apply(variables, x, idx, train=False)
    by_sigma = utils.get_model(config).apply(
        variables, x, jnp.full((3,), config.model.sigma_max), train=False)
    np.testing.assert_allclose(by_index, by_sigma, rtol=1e-5)


def test_mlp_rejects_bad_labels_and_embedding():
    config = _mlp_config()
    model = utils.get_model(config)
    x = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match='labels must have shape'):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((2,)), train=False))
    config = _mlp_config(embedding_type='learned')
    with pytest.raises(ValueError, match='config.model.embedding_type'):
        jax.eval_shape(lambda: utils.get_model(config).init(
            jax.random.PRNGKey(0), x, jnp.zeros((3,)), train=False))
