"""The training step: state, optimizer, EMA, gradient accumulation, compiled over a mesh.

Everything here is pure: ``train_step(state, batch, rng) -> (state, metrics)`` maps arrays to
arrays. Data parallelism is one code path for 1 device, many local devices and many hosts:
``jax.jit`` over a 1-D ``('data',)`` mesh of *all* devices, the global batch sharded on axis 0
(built from each process's local part by :func:`sharding.make_global_batch`) and the state replicated.
XLA inserts the gradient all-reduce; random draws are over the global batch, so the result does
not depend on how many devices or hosts share the batch (up to float summation order).

Optimizer (official score_sde, SPEC §3): gradients clipped to global norm
``config.optim.grad_clip`` as ``torch.nn.utils.clip_grad_norm_`` does
(:func:`clip_by_global_norm`), then Adam(``lr``, ``beta1``, β₂ = 0.999, ``eps``) with decoupled
``weight_decay`` and the learning rate ``lr · min(step / warmup, 1)`` (``step`` = updates done
before this one, so the first update has lr 0, as in the official code). EMA after each update:
``params_ema ← r · params_ema + (1 − r) · params`` with r = ``config.model.ema_rate``.

Random draws are per example: example i of the global batch draws its noise level, noise and
dropout from ``split(step key, B)[i]``, and the loss is the mean of the per-example losses. So
``config.training.grad_accum_steps`` = k (the batch cut into k microbatches, their gradients
summed in a ``lax.scan`` before one update) gives the update of the whole batch up to float
summation order, whatever k and the number of devices.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import flax
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from score_sde_jax import datasets, losses, sde_lib, sharding
from score_sde_jax.models import utils as mutils

Array = jax.Array
Batch = Mapping[str, Array]
StepLoss = losses.StepLoss


@flax.struct.dataclass
class TrainState:
    """step: () int32 updates done; params / params_ema: the network's 'params' collection;
    opt_state: optax state; rng: (2,) uint32 base key (step keys are ``fold_in(rng, step)``)."""

    step: Array
    params: dict
    opt_state: optax.OptState
    params_ema: dict
    rng: Array


# ---------------------------------------------------------------------------- state and steps
_JITTED: dict[tuple, Callable] = {}
_SCHEDULE_KEYS = [("training", k) for k in ("n_iters", "log_freq", "eval_freq", "snapshot_freq",
                                            "snapshot_freq_for_preemption", "snapshot_sampling",
                                            "n_jitted_steps")]
_MAX_JITTED = 32


def cached_jit(what: tuple, config, build: Callable[[], Callable]) -> Callable:
    """The jitted function ``build()`` for (what, config), reused by later calls with an equal
    config (so that repeated ``run_lib.train`` calls in one process compile once)."""
    settings = json.loads(config.to_json_best_effort(sort_keys=True))
    for section, name in _SCHEDULE_KEYS:  # read by the loop only, never inside a jitted function
        settings.get(section, {}).pop(name, None)
    key = (*what, json.dumps(settings, sort_keys=True))
    if key not in _JITTED:
        if len(_JITTED) >= _MAX_JITTED:
            _JITTED.pop(next(iter(_JITTED)))
        _JITTED[key] = build()
    return _JITTED[key]


def get_optimizer(config) -> optax.GradientTransformation:
    """Global-norm clipping + Adam with linear warmup (see the module docstring)."""
    o = config.optim
    if str(o.optimizer).lower() != "adam":
        raise ValueError(f"config.optim.optimizer={o.optimizer!r}: only 'Adam' is implemented")
    tx = optax.adamw(learning_rate(config), b1=o.beta1, b2=o.get("beta2", 0.999), eps=o.eps,
                     weight_decay=o.weight_decay)
    if o.grad_clip is not None and o.grad_clip > 0:
        tx = optax.chain(clip_by_global_norm(float(o.grad_clip)), tx)
    return tx


_SMALL_LEAF = 4096


def global_norm(tree) -> Array:
    """‖tree‖₂ = √(Σ over leaves of Σ x²), in float32.

    The leaves of at most 4096 elements (biases and norm scales: 377 of the 564 leaves of the
    CIFAR-10 DDPM++) are squared and summed as one concatenated vector, one reduction for all
    of them instead of three instructions each: XLA's compile time grows faster than the
    number of instructions (BENCHMARKS.md section 13)."""
    leaves = [x.astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)]
    parts = [jnp.sum(jnp.square(x)) for x in leaves if x.size > _SMALL_LEAF]
    small = [x.ravel() for x in leaves if x.size <= _SMALL_LEAF]
    if small:
        parts.append(jnp.sum(jnp.square(jnp.concatenate(small))))
    return jnp.sqrt(sum(parts, jnp.zeros((), jnp.float32)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """The official clipping (``torch.nn.utils.clip_grad_norm_``): every gradient times one
    factor, g ← g · min(max_norm / (‖g‖ + 1e-6), 1), ‖g‖ by :func:`global_norm`. Its state is
    optax's ``EmptyState``, as that of ``optax.clip_by_global_norm`` (same checkpoints); unlike
    optax's ``(g / ‖g‖) · max_norm`` per element, the scalar factor is a multiply that XLA fuses
    into Adam's moment updates instead of a pass of its own for every leaf."""

    def update(updates, state, params=None):
        del params
        factor = jnp.minimum(max_norm / (global_norm(updates) + 1e-6), 1.0)
        return jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def learning_rate(config) -> Callable[[Array], Array]:
    """lr(step) = lr · min(step / warmup, 1); constant lr when warmup <= 0."""
    lr, warmup = float(config.optim.lr), float(config.optim.warmup)
    if warmup <= 0:
        return lambda step: jnp.full((), lr, jnp.float32)
    return lambda step: lr * jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)


def _state(tx: optax.GradientTransformation, params: dict, params_ema: dict, step, rng: Array) -> TrainState:
    """A TrainState at ``step`` with fresh optimizer moments for ``params`` (traceable)."""
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params),
                      params_ema=params_ema, rng=rng)


def _fresh_state_fn(config) -> Callable[[Array], TrainState]:
    """``rng (2,) uint32 -> TrainState`` at step 0 (traceable)."""
    init = mutils.init_model
    tx = get_optimizer(config)

    def fresh(rng: Array) -> TrainState:
        variables = dict(init(jax.random.fold_in(rng, 1), config))
        extra = sorted(set(variables) - {"params"})
        if extra:
            raise ValueError(f"the network of config.model.name={config.model.name!r} has "
                             f"variable collections {extra} besides 'params'; training "
                             "supports 'params' only")
        params = variables["params"]
        return _state(tx, params, jax.tree_util.tree_map(jnp.copy, params), 0, rng)

    return fresh


def train_state_from_params(config, params: dict, params_ema: dict, step: int) -> TrainState:
    """A state holding given (e.g. imported) network parameters: fresh optimizer moments and
    ``PRNGKey(config.seed)`` as the noise key, so training resumes from it and eval/sample read it."""
    return _state(get_optimizer(config), jax.tree_util.tree_map(jnp.asarray, params),
                  jax.tree_util.tree_map(jnp.asarray, params_ema), step,
                  jnp.asarray(jax.random.PRNGKey(int(config.seed)), jnp.uint32))


def create_train_state(config, rng: Array) -> TrainState:
    """Fresh state: network variables from ``rng``, EMA = params, step 0, and ``rng`` itself as
    the base key of the training noise (one ``models.utils.compile_once`` computation)."""
    if jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    rng = jnp.asarray(rng, jnp.uint32)
    if isinstance(rng, jax.core.Tracer):  # called under jit / eval_shape: stay traceable
        return _fresh_state_fn(config)(rng)
    return cached_jit(("init",), config, lambda: mutils.compile_once(
        _fresh_state_fn(config), jax.ShapeDtypeStruct((2,), jnp.uint32)))(rng)


def abstract_train_state(config, sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """The state's tree of ``jax.ShapeDtypeStruct`` (no computation): a cheap template for
    ``checkpoints.restore``. ``sharding`` defaults to the first local device."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(_fresh_state_fn(config), jax.ShapeDtypeStruct((2,), jnp.uint32))
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                                  shapes)


def summed_per_example(loss_fn: StepLoss, batched: bool = False
                       ) -> Callable[[dict, Array, Batch], tuple[Array, dict]]:
    """``(params, keys (b, 2), batch (b, ...)) -> (Σ_i loss_i, Σ_i aux_i)`` where loss_i is
    ``loss_fn`` on example i alone (a batch of one) with key ``keys[i]``.

    ``batched``: one call of ``loss_fn`` on the whole batch with the per-example keys, times b
    (the same values when the loss draws example i's noise from ``keys[i]`` and the network
    treats examples independently, as the score task: :func:`batched_loss`);
    else ``vmap`` of batch-of-one calls (1.17× slower a step on CPU, BENCHMARKS.md §4)."""
    if batched:
        def whole(params: dict, keys: Array, batch: Batch) -> tuple[Array, dict]:
            loss, aux = loss_fn(params, keys, batch)
            return jax.tree_util.tree_map(lambda v: v * keys.shape[0], (loss, aux))

        return whole

    def summed(params: dict, keys: Array, batch: Batch) -> tuple[Array, dict]:
        def one(key, example):
            return loss_fn(params, key, jax.tree_util.tree_map(lambda v: v[None], example))

        per_loss, per_aux = jax.vmap(one)(keys, batch)
        return jnp.sum(per_loss), jax.tree_util.tree_map(jnp.sum, per_aux)

    return summed


def batched_loss(config) -> bool:
    """True when the training loss can run on the whole batch with per-example keys: the score
    task (its noise draws and dropout masks take one key per example, ``prng.batch_key``);
    other tasks run each example alone (:func:`summed_per_example`)."""
    return config.training.task == "score"


def grad_accum_steps(config) -> int:
    """``config.training.grad_accum_steps`` (default 1), checked to be a positive integer."""
    k = config.training.get("grad_accum_steps", 1)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"config.training.grad_accum_steps={k!r} must be a positive integer")
    return int(k)


def check_grad_accum(config, mesh: Mesh) -> int:
    """``config.training.grad_accum_steps`` = k checked against the global batch and the mesh
    before any work (the checks :func:`microbatches` makes when the step is traced): k a
    positive integer dividing ``config.training.batch_size`` into microbatches that are a
    multiple of the number of devices. Returns k."""
    k = grad_accum_steps(config)
    _check_split(int(config.training.batch_size), k, mesh, "config.training.batch_size")
    return k


def _check_split(size: int, k: int, mesh: Mesh | None, what: str) -> None:
    """A batch of ``size`` splits into k microbatches, each a multiple of the device count."""
    if size % k:
        raise ValueError(f"config.training.grad_accum_steps={k} does not divide {what}={size} "
                         "into equal microbatches")
    if mesh is not None and (size // k) % mesh.devices.size:
        raise ValueError(f"config.training.grad_accum_steps={k} makes microbatches of {size // k}, "
                         f"not a multiple of the number of devices ({mesh.devices.size})")


def microbatches(tree, k: int, mesh: Mesh | None = None):
    """(B, ...) leaves -> (k, B/k, ...): microbatch j holds examples j, j + k, j + 2k, ... so
    that each device keeps its own rows (with ``mesh``, microbatches are sharded over 'data')."""
    sizes = {v.shape[0] for v in jax.tree_util.tree_leaves(tree)}
    (size,) = sizes
    _check_split(size, k, mesh, "the global batch")

    def split(v):
        v = jnp.swapaxes(v.reshape(size // k, k, *v.shape[1:]), 0, 1)
        return v if mesh is None else jax.lax.with_sharding_constraint(v, sharding.data_sharding(mesh, True))

    return jax.tree_util.tree_map(split, tree)


def get_train_step(config, mesh: Mesh | None = None, step_loss: StepLoss | None = None
                   ) -> Callable[[TrainState, Batch, Array], tuple[TrainState, dict]]:
    """``train_step(state, batch, rng) -> (new_state, metrics)``: one pure update.

    batch: ``{'image': (B, *data_shape) in [0, 1], 'label': (B,)}``; the data scaler is applied
    here. metrics: ``loss``, ``grad_norm`` (before clipping), ``lr`` and the task's aux values
    (batch means of the per-example values). With ``config.training.grad_accum_steps`` = k the
    gradient is summed over k microbatches of B/k (:func:`microbatches`; ``mesh`` keeps them
    sharded) before the update. ``step_loss`` replaces the config's objective
    (:func:`losses.get_step_loss`) by another ``loss(params, rng, batch) -> (loss, aux)``.
    """
    sde, _ = sde_lib.get_sde(config)
    if step_loss is None:
        step_loss = losses.get_step_loss(config, sde, mutils.get_model(config), train=True)
    summed = summed_per_example(step_loss, batched_loss(config))
    tx, lr_fn = get_optimizer(config), learning_rate(config)
    scaler, ema_rate = datasets.get_data_scaler(config), float(config.model.ema_rate)
    k = grad_accum_steps(config)

    def mean_grads(params: dict, keys: Array, batch: Batch, size: int):
        """((loss, aux), grads) of the batch mean: the 1 / size is applied to the loss before
        differentiating (a scalar), not to every gradient leaf afterwards (a pass per leaf);
        the same values when size is a power of two."""
        grad_fn = jax.value_and_grad(
            lambda *a: jax.tree_util.tree_map(lambda v: v / size, summed(*a)), has_aux=True)
        if k == 1:
            return grad_fn(params, keys, batch)
        micro = microbatches((keys, batch), k, mesh)
        first = jax.tree_util.tree_map(lambda v: v[0], micro)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                       jax.eval_shape(grad_fn, params, *first))

        def accumulate(total, mb):
            return jax.tree_util.tree_map(jnp.add, total, grad_fn(params, *mb)), None

        return jax.lax.scan(accumulate, zeros, micro)[0]

    def train_step(state: TrainState, batch: Batch, rng: Array) -> tuple[TrainState, dict]:
        batch = {**batch, "image": scaler(batch["image"])}
        size = batch["image"].shape[0]
        (loss, aux), grads = mean_grads(state.params, jax.random.split(rng, size), batch, size)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params_ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                                            state.params_ema, params)
        metrics = {"loss": loss, "grad_norm": global_norm(grads),
                   "lr": lr_fn(state.step), **aux}
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            params_ema=params_ema)
        return new, metrics

    return train_step


def get_eval_step(config) -> Callable[[TrainState, Batch, Array], dict]:
    """``eval_step(state, batch, rng) -> metrics``: the loss of the EMA weights, no dropout."""
    sde, _ = sde_lib.get_sde(config)
    loss_fn = losses.get_step_loss(config, sde, mutils.get_model(config), train=False)
    scaler = datasets.get_data_scaler(config)

    def eval_step(state: TrainState, batch: Batch, rng: Array) -> dict:
        loss, aux = loss_fn(state.params_ema, rng, {**batch, "image": scaler(batch["image"])})
        return {"loss": loss, **aux}

    return eval_step


def step_rng(state: TrainState, salt: int = 0) -> Array:
    """The key of the update ``state.step``: ``fold_in(fold_in(state.rng, salt), step)``."""
    return jax.random.fold_in(jax.random.fold_in(state.rng, salt), state.step)


# ---------------------------------------------------------------------------- compiled over a mesh
def compile_train_step(config, mesh: Mesh, n_steps: int = 1, unroll: bool | None = None):
    """Jitted ``(state, batches) -> (state, metrics)`` over ``mesh`` running ``n_steps``
    updates (``lax.scan``; batches stacked (n_steps, B, ...) and metrics (n_steps,) when
    n_steps > 1), update i using the key ``step_rng(state)``. The input state is donated.

    ``unroll`` (default: on CPU meshes only) writes the n updates out instead of a rolled
    loop. XLA:CPU runs the weight-gradient convolutions inside a loop body without its fast
    convolution kernels: a rolled 5-update call of the digits DDPM++ took 941 ms an update
    against 76 ms for single calls, unrolled 73 ms, for ~3x the compile time (7.8 -> 21.9 s;
    ``bench/jitted_steps.py``, BENCHMARKS.md section 4, 2026-12-04). The same updates either
    way."""
    unroll = mesh.devices.flat[0].platform == "cpu" if unroll is None else unroll

    def build():
        train_step = get_train_step(config, mesh)

        def one(state, batch):
            return train_step(state, batch, step_rng(state))

        fn = one if n_steps == 1 else (lambda state, batches: jax.lax.scan(
            one, state, batches, unroll=n_steps if unroll else 1))
        rep = sharding.replicated(mesh)
        return jax.jit(fn, in_shardings=(rep, sharding.data_sharding(mesh, n_steps > 1)),
                       out_shardings=(rep, rep), donate_argnums=0)

    return cached_jit(("train", mesh, n_steps, unroll), config, build)


def compile_eval_step(config, mesh: Mesh):
    """Jitted ``(state, batch) -> metrics`` over ``mesh`` (key ``step_rng(state, salt=1)``)."""

    def build():
        eval_step = get_eval_step(config)
        rep = sharding.replicated(mesh)
        return jax.jit(lambda state, batch: eval_step(state, batch, step_rng(state, 1)),
                       in_shardings=(rep, sharding.data_sharding(mesh)), out_shardings=rep)

    return cached_jit(("eval", mesh), config, build)
