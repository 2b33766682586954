"""The training step: state, optimizer, EMA, gradient accumulation, compiled over a mesh.

Everything here is pure: ``train_step(state, batch, rng) -> (state, metrics)`` maps arrays to
arrays. Data parallelism is one code path for 1 device, many devices and many hosts: ``jax.jit``
over a 1-D ``('data',)`` mesh of *all* devices, the global batch (:func:`sharding.make_global_batch`)
sharded on axis 0, the state replicated; XLA inserts the gradient all-reduce.

Optimizer (official score_sde, SPEC §3): gradients clipped to global norm
``config.optim.grad_clip`` as ``torch.nn.utils.clip_grad_norm_`` does
(:func:`clip_by_global_norm`), then Adam(``lr``, ``beta1``, β₂ = 0.999, ``eps``) with decoupled
``weight_decay`` and the learning rate ``lr · min(step / warmup, 1)`` (``step`` = updates done
before this one, so the first update has lr 0, as in the official code). EMA after each update:
``params_ema ← r · params_ema + (1 − r) · params`` with r = ``config.model.ema_rate``.

Random draws are per example: example i of the global batch draws its noise level, noise and
dropout from ``split(step key, B)[i]``. So the update is that of the whole batch (up to float
summation order) whatever the number of devices and hosts and ``config.training.grad_accum_steps``.
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

from score_sde_jax import datasets, losses, programs, sde_lib, sharding
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
    """``build()`` (a jitted function, the state's shapes) for (what, config), reused by later
    calls with an equal config (so that repeated ``run_lib.train`` calls compile once)."""
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
    """‖tree‖₂ = √(Σ over leaves of Σ x²), in float32. The leaves of ≤ 4096 elements (377 of the
    564 of the CIFAR-10 DDPM++) as one concatenated vector, one reduction instead of three
    instructions each: XLA's compile time grows faster than a program (BENCHMARKS.md §13)."""
    leaves = [x.astype(jnp.float32) for x in jax.tree_util.tree_leaves(tree)]
    parts = [jnp.sum(jnp.square(x)) for x in leaves if x.size > _SMALL_LEAF]
    small = [x.ravel() for x in leaves if x.size <= _SMALL_LEAF]
    if small:
        parts.append(jnp.sum(jnp.square(jnp.concatenate(small))))
    return jnp.sqrt(sum(parts, jnp.zeros((), jnp.float32)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """The official clipping (``torch.nn.utils.clip_grad_norm_``): every gradient times one
    factor, g ← g · min(max_norm / (‖g‖ + 1e-6), 1), ‖g‖ by :func:`global_norm`; a multiply
    XLA fuses into Adam's moments. Its state is ``EmptyState``, as ``optax.clip_by_global_norm``'s
    (same checkpoints)."""

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
    tx = get_optimizer(config)

    def fresh(rng: Array) -> TrainState:
        variables = dict(mutils.init_model(jax.random.fold_in(rng, 1), config))
        if extra := sorted(set(variables) - {"params"}):
            raise ValueError(f"the network of config.model.name={config.model.name!r} has variable "
                             f"collections {extra} besides 'params'; training supports 'params' only")
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
    """The state's tree of ``jax.ShapeDtypeStruct`` (no computation; traced once per config): a
    cheap template for ``checkpoints.restore``. ``sharding`` defaults to the first local device."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = cached_jit(("shapes",), config, lambda: jax.eval_shape(
        _fresh_state_fn(config), jax.ShapeDtypeStruct((2,), jnp.uint32)))
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def grad_accum_steps(config) -> int:
    """``config.training.grad_accum_steps`` (default 1), checked to be a positive integer."""
    k = config.training.get("grad_accum_steps", 1)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"config.training.grad_accum_steps={k!r} must be a positive integer")
    return int(k)


def check_grad_accum(config, mesh: Mesh) -> int:
    """``config.training.grad_accum_steps`` = k, checked before any work as :func:`microbatches`
    checks it when the step is traced (k divides the batch into multiples of the device count)."""
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
    (size,) = {v.shape[0] for v in jax.tree_util.tree_leaves(tree)}
    _check_split(size, k, mesh, "the global batch")

    def split(v):
        v = jnp.swapaxes(v.reshape(size // k, k, *v.shape[1:]), 0, 1)
        return v if mesh is None else jax.lax.with_sharding_constraint(v, sharding.data_sharding(mesh, True))

    return jax.tree_util.tree_map(split, tree)


def get_grad_step(config, mesh: Mesh | None = None, step_loss: StepLoss | None = None
                  ) -> Callable[[TrainState, Batch, Array], tuple[dict, dict]]:
    """``grad_step(state, batch, rng) -> (grads, metrics)``: the gradient of the batch-mean loss
    with respect to ``state.params``; metrics ``loss`` and the task's aux values (batch means).

    batch: ``{'image': (B, *data_shape) in [0, 1], 'label': (B,)}``; the data scaler is applied
    here. With ``config.training.grad_accum_steps`` = k the gradient is summed over k
    microbatches of B/k (:func:`microbatches`; ``mesh`` keeps them sharded). ``step_loss``
    replaces the config's objective (:func:`losses.get_step_loss`) by another
    ``loss(params, rng, batch) -> (loss, aux)``."""
    sde, _ = sde_lib.get_sde(config)
    if step_loss is None:
        step_loss = losses.get_step_loss(config, sde, mutils.get_model(config), train=True)
    summed = losses.summed_per_example(step_loss, losses.batched_loss(config))
    scaler, k = datasets.get_data_scaler(config), grad_accum_steps(config)

    def mean_grads(params: dict, keys: Array, batch: Batch, size: int):
        # The batch mean's 1 / size on the loss, not on every gradient leaf (a pass per leaf).
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

    def grad_step(state: TrainState, batch: Batch, rng: Array) -> tuple[dict, dict]:
        batch = {**batch, "image": scaler(batch["image"])}
        size = batch["image"].shape[0]
        (loss, aux), grads = mean_grads(state.params, jax.random.split(rng, size), batch, size)
        return grads, {"loss": loss, **aux}

    return grad_step


def get_update_step(config) -> Callable[[TrainState, dict, dict], tuple[TrainState, dict]]:
    """``update(state, grads, metrics) -> (new_state, metrics)``: clipping and Adam, EMA, step
    + 1; adds the metrics ``grad_norm`` (before clipping) and ``lr``."""
    tx, lr_fn, ema_rate = get_optimizer(config), learning_rate(config), float(config.model.ema_rate)

    def update(state: TrainState, grads: dict, metrics: dict) -> tuple[TrainState, dict]:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params_ema = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1.0 - ema_rate) * p,
                                            state.params_ema, params)
        metrics = {**metrics, "grad_norm": global_norm(grads), "lr": lr_fn(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             params_ema=params_ema), metrics

    return update


def get_train_step(config, mesh: Mesh | None = None, step_loss: StepLoss | None = None
                   ) -> Callable[[TrainState, Batch, Array], tuple[TrainState, dict]]:
    """``train_step(state, batch, rng) -> (new_state, metrics)``: one pure update,
    :func:`get_update_step` of :func:`get_grad_step` (arguments and metrics as there)."""
    grad_step, update = get_grad_step(config, mesh, step_loss), get_update_step(config)

    def train_step(state: TrainState, batch: Batch, rng: Array) -> tuple[TrainState, dict]:
        return update(state, *grad_step(state, batch, rng))

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
# On a CPU mesh, a network of at least this many parameters has its step compiled in pieces,
# as XLA:CPU's compile time grows faster than a program: one update as two programs, its
# gradient then its update (programs.TwoPrograms), n updates a call as n calls of that
# (programs.Repeated); GPU / TPU meshes (not measured) keep one program. The CIFAR-10 DDPM++
# (62 M): one update compiles 1.25-1.33x faster, as fast a step; 5 updates 13 s against 113 s
# unrolled, 13 % faster an update. Smaller networks: as two programs a step of the DDPM++ with
# nf = 64 (15 M) took 0-2 % longer, of the digits DDPM++ (0.75 M) ~10 % (the update's own
# call, no overlap with the backward pass), whose 5 updates unrolled run 10 % faster than 5
# calls. BENCHMARKS.md §4, §13; bench/two_programs.py, bench/jitted_steps.py.
LARGE_NETWORK = 50_000_000


def compile_train_step(config, mesh: Mesh, n_steps: int = 1, unroll: bool | None = None):
    """Jitted ``(state, batch) -> (state, metrics)`` over ``mesh`` running ``n_steps``
    updates (batches stacked (n_steps, B, ...) and metrics (n_steps,) when n_steps > 1), update
    i using the key ``step_rng(state)``; the input state is donated. One update is one program
    (:func:`get_train_step`), or on a CPU mesh for a network of ≥ ``LARGE_NETWORK`` parameters
    :class:`programs.TwoPrograms` (:func:`get_grad_step`, then :func:`get_update_step`).

    n_steps > 1 is one program, a ``lax.scan`` of :func:`get_train_step`, unrolled with
    ``unroll`` (default: on CPU meshes only, where a rolled loop runs the weight-gradient
    convolutions ~20x slower); except by default on CPU for a network of ≥ ``LARGE_NETWORK``
    parameters: n calls of the one-update step (:func:`repeated_train_step`). The same updates
    every way."""
    cpu = mesh.devices.flat[0].platform == "cpu"
    rep, data = sharding.replicated(mesh), sharding.data_sharding(mesh, n_steps > 1)

    def build():
        large = cpu and sum(p.size for p in jax.tree_util.tree_leaves(
            abstract_train_state(config).params)) >= LARGE_NETWORK  # shapes traced on CPU only
        if n_steps > 1 and unroll is None and large:
            return repeated_train_step(config, mesh, n_steps)
        if n_steps == 1 and large:
            grad_step = get_grad_step(config, mesh)
            return programs.TwoPrograms(
                jax.jit(lambda state, batch: grad_step(state, batch, step_rng(state)),
                        in_shardings=(rep, data), out_shardings=rep),
                jax.jit(get_update_step(config), in_shardings=rep, out_shardings=rep,
                        donate_argnums=0))
        train_step = get_train_step(config, mesh)

        def one(state, batch):
            return train_step(state, batch, step_rng(state))

        fn = one if n_steps == 1 else (lambda state, batches: jax.lax.scan(
            one, state, batches, unroll=n_steps if (cpu if unroll is None else unroll) else 1))
        return jax.jit(fn, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)

    return cached_jit(("train", mesh, n_steps, unroll), config, build)


def repeated_train_step(config, mesh: Mesh, n_steps: int) -> programs.Repeated:
    """``(state, batches (n_steps, B, ...)) -> (state, metrics (n_steps,))`` as n_steps calls
    of ``compile_train_step(config, mesh)`` (its compiled programs shared)."""
    take = jax.jit(lambda batches, i: jax.tree_util.tree_map(lambda v: v[i], batches),
                   out_shardings=sharding.data_sharding(mesh))
    return programs.Repeated(compile_train_step(config, mesh), n_steps, take)


def compile_eval_step(config, mesh: Mesh):
    """Jitted ``(state, batch) -> metrics`` over ``mesh`` (key ``step_rng(state, salt=1)``)."""

    def build():
        eval_step = get_eval_step(config)
        rep = sharding.replicated(mesh)
        return jax.jit(lambda state, batch: eval_step(state, batch, step_rng(state, 1)),
                       in_shardings=(rep, sharding.data_sharding(mesh)), out_shardings=rep)

    return cached_jit(("eval", mesh), config, build)
