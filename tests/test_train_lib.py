"""The training step and loop: learning for real, exact optimizer/EMA arithmetic, data-parallel
equivalence on 8 devices, pluggable losses, logging outputs, and the NaN stop."""

import os

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_helpers import ROOT, max_abs_diff, tiny_toy_config

from configs.digits import get_config as digits_config
from score_sde_jax import (
    analytic,
    checkpoints,
    cli,
    datasets,
    logging_utils,
    losses,
    programs,
    run_lib,
    sampling,
    sde_lib,
    sharding,
    train_lib,
)
from score_sde_jax.data.toy import gaussian_mixture_from_config
from score_sde_jax.models import utils as mutils


# ---------------------------------------------------------------------------- learning for real
def test_training_lowers_the_loss_and_brings_samples_to_the_data(tmp_path):
    """200 steps on the 2-D mixture: the DSM loss falls, and Euler-Maruyama samples of the EMA
    network score far better under the exact mixture density than the untrained network's."""
    config = tiny_toy_config(**{
        "model.nf": 64, "model.num_layers": 2, "model.ema_rate": 0.9, "model.num_scales": 100,
        "training.batch_size": 128, "training.n_iters": 200, "training.log_freq": 50,
        "training.snapshot_freq": 200, "training.snapshot_freq_for_preemption": 100,
        "optim.lr": 3e-3, "optim.warmup": 20, "data.dataset": "GMM"})
    untrained = train_lib.create_train_state(config, jax.random.PRNGKey(config.seed))
    one_device = sharding.make_mesh(jax.devices()[:1])  # 8-device runs: the tests below
    trained = jax.device_get(run_lib.train(config, str(tmp_path), mesh=one_device))
    assert int(trained.step) == 200
    assert [r["step"] for r in logging_utils.read_metrics(tmp_path)] == [50, 100, 150, 200]

    gmm = gaussian_mixture_from_config(config.data)
    sde, eps = sde_lib.get_sde(config)
    model = mutils.get_model(config)
    loss_fn = jax.jit(losses.get_step_loss(config, sde, model, train=False))
    batch = {"image": gmm.sample(jax.random.PRNGKey(7), 4096)}
    loss_before = float(loss_fn(untrained.params, jax.random.PRNGKey(8), batch)[0])
    loss_after = float(loss_fn(trained.params, jax.random.PRNGKey(8), batch)[0])
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)

    sampler = sampling.get_sampling_fn(config, sde, (1000, 2), eps)
    draw = jax.jit(lambda params: sampler(jax.random.PRNGKey(1), mutils.get_score_fn(
        sde, model, {"params": params}, continuous=True))[0])
    ref = gmm.sample(jax.random.PRNGKey(5), 1000)
    before, after = draw(untrained.params_ema), draw(trained.params_ema)
    loglik_before, loglik_after = (float(jnp.mean(gmm.log_prob(x))) for x in (before, after))
    sw_key = jax.random.PRNGKey(2)
    sw_before, sw_after = (float(analytic.sliced_wasserstein(sw_key, x, ref)) for x in (before, after))
    true_loglik = float(jnp.mean(gmm.log_prob(ref)))  # about -1.49
    assert loglik_after > true_loglik - 0.5 and loglik_after > loglik_before + 10, \
        (loglik_before, loglik_after, true_loglik)
    assert sw_after < 0.6 and sw_after < sw_before / 10, (sw_before, sw_after)


# ---------------------------------------------------------------------------- data parallelism
def _run_steps(config, devices, n_steps=3):
    mesh = sharding.make_mesh(devices)
    state = sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(64, 2)).astype(np.float32),
                "label": np.zeros(64, np.int32)} for _ in range(n_steps)]
    step = train_lib.compile_train_step(config, mesh)
    for b in batches:
        state, _ = step(state, sharding.make_global_batch(b, mesh))
    assert int(state.step) == n_steps
    return jax.device_get(state)


def test_data_parallel_step_equals_the_single_device_step():
    """Same global batches, same keys: 8 devices (batch split 8 ways, dropout on) give the
    parameters of 1 device."""
    assert jax.device_count() == 8  # tests/conftest.py
    config = tiny_toy_config(**{"model.dropout": 0.3, "optim.warmup": 1})
    one = _run_steps(config, jax.devices()[:1])
    eight = _run_steps(config, jax.devices())
    assert max_abs_diff(one.params, eight.params) <= 1e-5
    assert max_abs_diff(one.params_ema, eight.params_ema) <= 1e-5
    assert max_abs_diff(one.params, train_lib.create_train_state(
        config, jax.random.PRNGKey(0)).params) > 1e-3  # the updates did move the weights


@pytest.mark.parametrize("large", [False, True])
def test_several_updates_per_call_train_like_one_per_call(tmp_path, monkeypatch, large):
    """n_jitted_steps=5 (12 = 5 + 5 + 1 + 1 updates) ends where 12 single calls do: a
    lax.scan, or for a large network (``LARGE_NETWORK`` lowered to 0) calls of the one-update
    step made of two programs, through run_lib's loop."""
    if large:
        monkeypatch.setattr(train_lib, "LARGE_NETWORK", 0)
        monkeypatch.setattr(train_lib, "_JITTED", {})
    mesh = sharding.make_mesh(jax.devices()[:1])
    single = run_lib.train(tiny_toy_config(**{"training.n_iters": 12}), str(tmp_path / "a"), mesh)
    scanned = run_lib.train(tiny_toy_config(**{"training.n_iters": 12, "training.n_jitted_steps": 5}),
                            str(tmp_path / "b"), mesh)
    assert int(scanned.step) == 12
    assert max_abs_diff(jax.device_get(single), jax.device_get(scanned)) <= 1e-6


def _scans(jaxpr):
    """The scan equations of a jaxpr and of the jaxprs inside its equations."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            yield eqn
        for param in eqn.params.values():
            if isinstance(param, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr)):
                yield from _scans(getattr(param, "jaxpr", param))


def test_several_updates_per_call_on_cpu_unrolled_or_as_calls_of_the_one_update_step(monkeypatch):
    """On a CPU mesh n updates a call are by default an unrolled scan (a rolled one runs
    XLA:CPU's convolution gradients ~20x slower), or for a network of ≥ ``LARGE_NETWORK``
    parameters (lowered here to 0) n calls of the one-update step (programs.Repeated, sharing
    its compiled programs: an unrolled scan of the CIFAR-10 DDPM++ compiles ~8x as long). On 8
    devices, compiled ahead of time as main.py does, the calls give the same state bitwise as n
    calls of the one-update step, the metrics stacked (n,). ``unroll=False``: the rolled scan."""
    config = tiny_toy_config(**{"model.dropout": 0.3, "optim.warmup": 0})
    mesh = sharding.make_mesh(jax.devices())

    def fresh():
        return sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)

    rng = np.random.default_rng(0)
    local = {"image": rng.normal(size=(3, 64, 2)).astype(np.float32),
             "label": np.zeros((3, 64), np.int32)}

    def loops(unroll=None):
        jaxpr = jax.make_jaxpr(train_lib.compile_train_step(config, mesh, 3, unroll))(
            fresh(), jax.tree_util.tree_map(np.asarray, local))
        return [(eqn.params["length"], eqn.params["unroll"]) for eqn in _scans(jaxpr.jaxpr)]

    assert loops() == [(3, 3)] and loops(False) == [(3, 1)]
    monkeypatch.setattr(train_lib, "LARGE_NETWORK", 0)
    monkeypatch.setattr(train_lib, "_JITTED", {})  # not the steps built above
    repeated = train_lib.compile_train_step(config, mesh, 3)
    one = train_lib.compile_train_step(config, mesh)
    assert isinstance(repeated, programs.Repeated) and repeated.step is one
    assert isinstance(one, programs.TwoPrograms)
    batches = sharding.make_global_batch(local, mesh, stacked=True)
    state, metrics = repeated.lower(fresh(), batches).compile()(fresh(), batches)
    single, losses_ = fresh(), []
    for i in range(3):
        single, m = one(single, sharding.make_global_batch({k: v[i] for k, v in local.items()}, mesh))
        losses_.append(float(m["loss"]))
    assert int(state.step) == 3 and metrics["loss"].shape == (3,)
    assert max_abs_diff(jax.device_get(state), jax.device_get(single)) == 0
    np.testing.assert_array_equal(np.asarray(metrics["loss"]), np.float32(losses_))


def test_a_large_network_updates_by_two_programs_compiled_at_once_as_one_program_would(
        monkeypatch):
    """The one-update step of a network of ≥ ``LARGE_NETWORK`` parameters (lowered here to
    the toy's size; 8 devices, dropout on) is the gradient program then the update program:
    ``lower(...).compile()`` compiles both (two HLO modules: the network's gradient, then
    Adam's update) and returns the step; it, the jitted call and ``get_train_step`` as one
    program give the same update and metrics; the input state is donated. Below the threshold
    the step is one program."""
    config = tiny_toy_config(**{"model.dropout": 0.3, "optim.warmup": 0, "optim.grad_clip": 0.01})
    mesh = sharding.make_mesh(jax.devices())
    size = sum(p.size for p in jax.tree_util.tree_leaves(train_lib.abstract_train_state(config).params))
    small = train_lib.compile_train_step(config, mesh)
    assert not isinstance(small, programs.TwoPrograms) and size < train_lib.LARGE_NETWORK
    monkeypatch.setattr(train_lib, "LARGE_NETWORK", size)
    monkeypatch.setattr(train_lib, "_JITTED", {})  # not the one-program step built above

    def fresh():
        return sharding.replicate(train_lib.create_train_state(config, jax.random.PRNGKey(0)), mesh)

    rng = np.random.default_rng(0)
    batch = sharding.make_global_batch({"image": rng.normal(size=(64, 2)).astype(np.float32),
                                        "label": np.zeros(64, np.int32)}, mesh)
    step = train_lib.compile_train_step(config, mesh)
    assert isinstance(step, programs.TwoPrograms)
    compiled = step.lower(fresh(), batch).compile()
    modules = compiled.as_text().split("HloModule ")[1:]
    assert len(modules) == 2 and " dot(" in modules[0]  # the network and its gradients
    assert " dot(" not in modules[1] and " sqrt(" in modules[1]  # the update: Adam's √v̂ + ε

    state = fresh()
    new, metrics = compiled(state, batch)
    assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state.params))
    called = step(fresh(), batch)
    one = fresh()
    whole = jax.jit(train_lib.get_train_step(config, mesh))(one, batch, train_lib.step_rng(one))
    assert int(new.step) == 1 and 0.01 < float(metrics["grad_norm"])  # the clip is active
    assert set(metrics) == set(whole[1]) == {"loss", "grad_norm", "lr"}
    for other in (called, whole):
        assert max_abs_diff(jax.device_get((new, metrics)), jax.device_get(other)) <= 1e-6
    assert max_abs_diff(jax.device_get(new.params), jax.device_get(fresh().params)) > 1e-4


def test_init_model_is_one_program_and_the_fresh_train_state_holds_its_parameters():
    """``init_model`` on a concrete key compiles one program (op by op, the tiny NCSN++'s
    hundreds of initializers and layers compiled ~250 programs, 11 s), and the parameters of
    ``create_train_state(config, key)`` are those of ``init_model(fold_in(key, 1))``, bitwise:
    both are compiled alike (``models.utils.compile_once``)."""
    config = cli.load_config(os.path.join(ROOT, "configs/tiny/tiny_ncsnpp.py"))
    config.data.image_size, config.model.ch_mult, config.model.attn_resolutions = 8, (1,), (8,)
    key = jax.random.PRNGKey(7)
    compiles = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        params = mutils.init_model(jax.random.fold_in(key, 1), config)["params"]
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert 1 <= len(compiles) <= 3, len(compiles)  # fold_in, the init (and nothing op by op)
    state = train_lib.create_train_state(config, key)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(state.params)
    assert max_abs_diff(params, state.params) == 0.0


def test_batch_must_divide_over_devices():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="config.training.batch_size=12 must be a multiple of"):
        sharding.check_batch_size(12, mesh)


# ---------------------------------------------------------------------------- optimizer and EMA
COEF = jnp.array([3.0, -4.0, 0.0])  # gradient of the linear test loss; |COEF| = 5


def _linear_loss(params, rng, batch):
    """A custom objective given to the step by a call (no registry)."""
    return jnp.sum(COEF * params["w"]), {"batch_mean": jnp.mean(batch["image"])}


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_warmup_clipping_adam_and_ema_are_exact(grad_clip):
    config = tiny_toy_config(**{"model.ema_rate": 0.5, "optim.lr": 0.1, "optim.warmup": 4,
                                "optim.eps": 1.0, "optim.grad_clip": grad_clip})
    zeros = {"w": jnp.zeros(3)}
    state = train_lib.train_state_from_params(config, zeros, zeros, 0)
    step = jax.jit(train_lib.get_train_step(config, step_loss=_linear_loss))
    batch = {"image": jnp.full((4, 2), 0.25), "label": jnp.zeros(4, jnp.int32)}
    g = COEF / 5.0 if grad_clip else COEF  # clipped to global norm 1, or not at all
    adam = g / (jnp.abs(g) + 1.0)  # Adam's bias-corrected m / (sqrt(v) + eps) for a constant g
    lrs = []
    for _ in range(3):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
        lrs.append(float(metrics["lr"]))
        assert float(metrics["grad_norm"]) == pytest.approx(5.0)
        assert float(metrics["batch_mean"]) == pytest.approx(0.25)  # aux metrics pass through
    np.testing.assert_allclose(lrs, [0.0, 0.025, 0.05])  # lr * min(step / warmup, 1)
    w1 = -0.025 * adam
    np.testing.assert_allclose(state.params["w"], w1 + -0.05 * adam, rtol=1e-5, atol=1e-8)
    ema = 0.5 * (0.5 * 0.0 + 0.5 * w1) + 0.5 * (3 * w1)  # r e + (1 - r) p after each update
    np.testing.assert_allclose(state.params_ema["w"], ema, rtol=1e-5, atol=1e-8)
    assert int(state.step) == 3


def test_global_norm_and_the_official_clipping():
    """global_norm sums the small leaves as one vector and equals optax's norm (to float32
    rounding); the clipping multiplies every leaf by min(max / (norm + 1e-6), 1) as
    torch.nn.utils.clip_grad_norm_ does, and its optimizer state has the structure of
    optax.clip_by_global_norm's (checkpoints written before restore)."""
    rng = np.random.default_rng(0)
    tree = {"big": jnp.asarray(rng.normal(size=(70, 70)), jnp.float32),
            "small": [jnp.asarray(rng.normal(size=n), jnp.float32) for n in (3, 128, 4096)],
            "half": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16)}
    norm = float(train_lib.global_norm(tree))
    want = float(np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64)))
                             for v in jax.tree_util.tree_leaves(tree))))
    assert norm == pytest.approx(want, rel=1e-6)
    assert norm == pytest.approx(float(optax.tree.norm(tree)), rel=1e-6)
    for max_norm, factor in ((1.0, 1.0 / (want + 1e-6)), (1e3, 1.0)):
        clipped, _ = train_lib.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
        for c, g in zip(jax.tree_util.tree_leaves(clipped), jax.tree_util.tree_leaves(tree),
                        strict=True):
            assert c.dtype == g.dtype
            np.testing.assert_allclose(np.asarray(c, np.float32), np.asarray(g, np.float32) * factor,
                                       rtol=1e-2 if g.dtype == jnp.bfloat16 else 1e-6)
    config = tiny_toy_config()
    params = {"w": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lambda count: 1e-3))
    assert (jax.tree_util.tree_structure(train_lib.get_optimizer(config).init(params))
            == jax.tree_util.tree_structure(reference.init(params)))


def test_unknown_task_names_the_key():
    config = tiny_toy_config()
    config.training.task = "no_such_task"
    with pytest.raises(ValueError, match="config.training.task='no_such_task'"):
        train_lib.get_train_step(config)


# ---------------------------------------------------------------------------- losses by config
@pytest.mark.parametrize("sde_name,continuous,reference", [
    ("vpsde", False, "ddpm"), ("vesde", False, "smld"), ("subvpsde", True, "sde")])
def test_the_config_picks_the_loss(sde_name, continuous, reference):
    config = tiny_toy_config(**{"training.sde": sde_name, "training.continuous": continuous,
                                "model.embedding_type": "fourier" if sde_name == "vesde" else "positional"})
    sde, _ = sde_lib.get_sde(config)
    model = mutils.get_model(config)
    params = train_lib.create_train_state(config, jax.random.PRNGKey(0)).params
    batch = {"image": jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)}
    rng = jax.random.PRNGKey(3)
    got, aux = losses.get_step_loss(config, sde, model, train=False)(params, rng, batch)
    variables, loss_rng = {"params": params}, jax.random.split(rng)[0]
    if reference == "sde":
        fn = mutils.get_score_fn(sde, model, variables, continuous=True)
        want = losses.get_sde_loss_fn(sde, reduce_mean=True, likelihood_weighting=False)(loss_rng, fn,
                                                                                 batch["image"])
    else:
        make = losses.get_ddpm_loss_fn if reference == "ddpm" else losses.get_smld_loss_fn
        want = make(sde, reduce_mean=True)(loss_rng, mutils.get_model_fn(model, variables),
                                           batch["image"])
    assert aux == {} and float(got) == pytest.approx(float(want), rel=1e-6)


def test_unsupported_loss_settings_name_the_key():
    config = tiny_toy_config(**{"training.sde": "subvpsde", "training.continuous": False})
    sde, _ = sde_lib.get_sde(config)
    with pytest.raises(ValueError, match="config.training.continuous=False"):
        losses.get_step_loss(config, sde, mutils.get_model(config))
    config = tiny_toy_config(**{"training.continuous": False, "training.likelihood_weighting": True})
    with pytest.raises(ValueError, match="likelihood_weighting=True needs"):
        losses.get_step_loss(config, sde_lib.get_sde(config)[0], mutils.get_model(config))


# ---------------------------------------------------------------------------- images, NaN
@mutils.register_model(name="test_tiny_conv")
class TinyConv(nn.Module):
    """A 2-layer conv net: enough to push image batches through the training loop."""

    config: object

    @nn.compact
    def __call__(self, x, labels, train=False):
        h = nn.swish(nn.Conv(8, (3, 3))(x) + labels.reshape(-1, 1, 1, 1) / 1000.0)
        return nn.Conv(x.shape[-1], (3, 3))(h)


def test_image_training_on_the_embedded_digits_writes_logs_and_a_sample_grid(tmp_path):
    config = digits_config()
    config.model.name, config.model.num_scales = "test_tiny_conv", 10
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq = 16, 4, 2, 4
    t.snapshot_freq, t.snapshot_freq_for_preemption = 4, 2
    state = run_lib.train(config, str(tmp_path))
    assert int(state.step) == 4
    grid = tmp_path / "samples" / "iter_4" / "sample.png"
    from PIL import Image

    assert Image.open(grid).size == (4 * (16 * 8 + 2) + 2,) * 2  # 16 digits of 8x8 enlarged 16x, 2px border
    assert np.load(grid.with_suffix(".npz"))["samples"].shape == (16, 8, 8, 1)
    records = logging_utils.read_metrics(tmp_path)
    assert [r["step"] for r in records if "training_loss" in r] == [2, 4]
    assert [r["step"] for r in records if "eval_loss" in r] == [4]
    assert all(np.isfinite(r["training_loss"]) and r["steps_per_sec"] > 0
               for r in records if "training_loss" in r)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert checkpoints.all_steps(tmp_path / "checkpoints") == [4]
    assert checkpoints.all_steps(tmp_path / "checkpoints-meta") == [4]


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_toy_config(**{"training.n_iters": 10})
    run_lib.train(config, str(tmp_path))
    diverging = tiny_toy_config(**{"training.n_iters": 30, "optim.lr": 1e38})
    with pytest.raises(run_lib.NonFiniteLossError,
                       match=r"update 1\d gave loss (nan|inf).* the last checkpoint is .*/10\b"):
        run_lib.train(diverging, str(tmp_path))
    for directory in checkpoints.step_dirs(tmp_path):  # nothing after step 10 was saved
        assert checkpoints.all_steps(directory) == [10]
    kept = checkpoints.restore(tmp_path / "checkpoints-meta", train_lib.abstract_train_state(config))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(kept))


def test_the_data_stream_starts_mid_segment_without_drawing_the_skipped_batches():
    """Batch k of a resumed stream (flips and dequantization noise included) is batch k of the
    uninterrupted one, for image and toy data, and within and across data segments."""
    images = digits_config()
    images.data.random_flip, images.data.uniform_dequantization = True, True
    images.training.batch_size, images.training.snapshot_freq = 16, 6
    images.training.snapshot_freq_for_preemption = 4  # segments of 2 steps
    for config in (images, tiny_toy_config()):
        whole = [b for _, b in zip(range(7), datasets.local_batches(config, 0), strict=False)]
        for start in (1, 3, 5):
            resumed = [b for _, b in zip(range(7 - start), datasets.local_batches(config, start),
                                         strict=False)]
            assert max_abs_diff(resumed, whole[start:]) == 0.0
