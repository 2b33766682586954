"""Label-conditional networks (config.model.num_classes) trained with label dropout, then sampled
with classifier-free guidance (score_sde_jax/guidance.py): the parameter trees, the per-example
label-dropout draws on 1 and 8 devices, and a trained toy model whose guided samples of a class
are classified as that class by the exact Bayes classifier of the mixture."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_helpers import max_abs_diff, tiny_toy_config

from score_sde_jax import analytic, guidance, losses, prng, sampling, sde_lib, sharding, train_lib
from score_sde_jax.models import utils as mutils


def _conditional(config, k=3, **overrides):
    config.model.num_classes = k
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def _tree_shapes(config, batch=2):
    model = mutils.get_model(config)
    x = jax.ShapeDtypeStruct((batch, *mutils.data_shape(config)), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.float32)
    abstract = jax.eval_shape(lambda x, y: model.init(jax.random.PRNGKey(0), x, y, train=False), x, y)
    return jax.tree.map(lambda a: a.shape, abstract["params"])


def _random_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


@pytest.mark.parametrize("name", ["tiny.tiny_ncsnpp", "tiny.tiny_ddpmpp", "tiny.tiny_ddpm",
                                  "toy_gmm"])
def test_conditional_network_adds_only_a_class_embedding(name):
    """num_classes = 0 keeps the official tree; K adds 'class_embed' (K + 1, 4 nf) and nothing
    else; the output depends on the class label, and no label means the null label K."""
    load = importlib.import_module("configs." + name).get_config
    plain = _tree_shapes(load())
    assert "class_embed" not in plain
    config = _conditional(load())
    cond = _tree_shapes(config)
    assert cond.pop("class_embed") == {"embedding": (4, 4 * config.model.nf)}
    assert cond == plain

    if name == "toy_gmm":  # the image networks' forward passes: below, on the toy only (CPU)
        model = mutils.get_model(config)
        params = _random_params(_tree_shapes(config))
        x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
        t = jnp.full((4,), 500.0)
        out = {y: model.apply({"params": params}, x, t, False, class_labels=jnp.full((4,), y))
               for y in range(4)}
        assert min(float(jnp.max(jnp.abs(out[a] - out[b]))) for a in range(4) for b in range(a)) > 1e-3
        np.testing.assert_array_equal(model.apply({"params": params}, x, t, False), out[3])
        with pytest.raises(ValueError, match="unconditional network"):
            mutils.get_model(load()).apply({"params": _random_params(plain)}, x, t, False,
                                           class_labels=jnp.zeros(4, jnp.int32))


def test_num_classes_needs_a_conditional_score_network():
    config = importlib.import_module("configs.tiny.tiny_ncsnv2").get_config()
    config.model.num_classes = 10
    with pytest.raises(ValueError, match="class-conditional score networks"):
        mutils.num_classes(config)
    with pytest.raises(ValueError, match="label-conditional network"):
        guidance.get_guided_score_fn(tiny_toy_config(), sde_lib.VPSDE(), {}, 0)


# ---------------------------------------------------------------------------- per-example draws
def _labelled_batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, 2)).astype(np.float32),
            "label": rng.integers(0, 3, n).astype(np.int32)}


def test_label_dropout_loss_is_per_example():
    """The batched loss with per-example keys equals the sum of batch-of-one losses: example
    i's t, noise and label-dropout draw come from its own key alone."""
    config = _conditional(tiny_toy_config(), **{"training.label_dropout": 0.5})
    sde, _ = sde_lib.get_sde(config)
    step_loss = losses.get_step_loss(config, sde, mutils.get_model(config), train=True)
    params = _random_params(_tree_shapes(config))  # the init's branches start at 0: labels matter
    keys = jax.random.split(jax.random.PRNGKey(1), 64)
    batch = jax.tree.map(jnp.asarray, _labelled_batch())
    whole = jax.jit(losses.summed_per_example(step_loss, batched=True))(params, keys, batch)[0]
    alone = jax.jit(losses.summed_per_example(step_loss, batched=False))(params, keys, batch)[0]
    np.testing.assert_allclose(whole, alone, rtol=1e-5)
    no_dropout = _conditional(tiny_toy_config(), **{"training.label_dropout": 0.0})
    plain = losses.get_step_loss(no_dropout, sde, mutils.get_model(no_dropout), train=True)
    assert abs(float(jax.jit(plain)(params, keys, batch)[0]) * 64 - float(whole)) > 1e-3  # labels dropped


def test_conditional_training_on_8_devices_equals_1_device():
    assert jax.device_count() == 8  # tests/conftest.py
    config = _conditional(tiny_toy_config(), **{"training.label_dropout": 0.5, "optim.warmup": 1})
    runs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)
        step = train_lib.compile_train_step(config, mesh)
        losses = []
        for i in range(3):
            state, metrics = step(state, sharding.make_global_batch(_labelled_batch(seed=i), mesh))
            losses.append(float(metrics["loss"]))
        runs.append((losses, jax.device_get(state.params)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    assert max_abs_diff(runs[0][1], runs[1][1]) <= 1e-5


# ---------------------------------------------------------------------------- a trained toy
def test_guided_sampling_sharded_over_8_devices_equals_1_device():
    """Per-example keys, the batch sharded over the mesh: the [x; x] concatenation of the guided
    score gives the samples of one device (exact mixture scores, so nothing to train)."""
    mix = analytic.default_mixture()
    sde = sde_lib.VPSDE(N=50)
    sampler = sampling.get_pc_sampler(sde, (64, 2), "euler_maruyama", "none", eps=1e-3)
    labels = jnp.arange(64) % 3  # a different class for neighbouring samples

    def draw(indices, y):
        score = guidance.guided_score_fn(sde, mix.conditional_score_fn(sde), y, 3, 1.5, (0.1, 10.0))
        return sampler(prng.example_keys(jax.random.PRNGKey(0), indices), score)[0]

    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        shard = sharding.data_sharding(mesh)
        fn = jax.jit(draw, in_shardings=(shard, shard), out_shardings=shard)
        outs.append(np.asarray(fn(jnp.arange(64), labels)))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert float(np.mean(np.asarray(mix.posterior_class(jnp.asarray(outs[1]))) == labels)) > 0.9
