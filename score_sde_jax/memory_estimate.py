"""Device memory of a train step, estimated from its trace (no compile, no backend's buffer plan).

XLA:CPU's compiled ``memory_analysis()`` does not realise rematerialization (a jax.checkpoint'ed
MLP's temporaries grow there; BENCHMARKS.md §8), so ``bench/memory.py`` also reports what the
forward pass keeps for the backward pass, read off the traced vjp: :func:`saved_residual_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from score_sde_jax import losses, sde_lib, train_lib
from score_sde_jax.models import utils as mutils


def _kept_bytes(fn: Callable, wrt: Sequence[int], *args) -> int:
    """Bytes of the residuals that ``vjp`` of ``fn`` w.r.t. ``args[i]`` (i in ``wrt``) keeps,
    traced on the shapes ``args`` (nothing run), less those that are inputs themselves; each
    kept value counted once."""

    def residuals(*a):
        def of_wrt(*w):
            full = list(a)
            for i, x in zip(wrt, w, strict=True):
                full[i] = x
            return fn(*full)

        return jax.vjp(of_wrt, *(a[i] for i in wrt))[1]

    jaxpr = jax.make_jaxpr(residuals)(*args).jaxpr
    inputs = set(jaxpr.invars)
    kept = {v for v in jaxpr.outvars if isinstance(v, jax.extend.core.Var) and v not in inputs}
    return int(sum(np.prod(v.aval.shape, dtype=np.int64) * v.aval.dtype.itemsize for v in kept))


def _remat_blocks(jaxpr):
    """The rematerialized (``jax.checkpoint``) equations of ``jaxpr``, outermost ones."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "remat2":
            yield eqn
        else:
            for inner in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from _remat_blocks(inner)


def saved_residual_bytes(config, batch_size: int) -> dict[str, int]:
    """What the backward pass of one microbatch (``batch_size // k`` examples, k =
    ``grad_accum_steps``: what accumulation holds at once) needs, traced on abstract shapes
    (``jax.make_jaxpr``; nothing compiled or run), independent of any backend's buffer plan:

    ``saved``: the residuals of ``vjp`` of the summed train-step loss w.r.t. the parameters, kept
    from the forward pass until the backward pass (not counting residuals that *are* inputs: the
    float32 parameters, the batch). ``recompute``: the largest residuals of one rematerialized
    block (``config.model.remat``), rebuilt and held while that block's backward runs (0
    without remat). Counted before XLA's fusion, which may recompute cheap elementwise values.
    """
    k = train_lib.grad_accum_steps(config)
    if batch_size % k:
        raise ValueError(f"batch_size={batch_size} is not divisible by "
                         f"config.training.grad_accum_steps={k}")
    b, shape = batch_size // k, mutils.data_shape(config)
    sde, _ = sde_lib.get_sde(config)
    loss = losses.get_step_loss(config, sde, mutils.get_model(config), train=True)
    summed = losses.summed_per_example(loss, losses.batched_loss(config))
    params = train_lib.abstract_train_state(config).params
    args = (params, jax.ShapeDtypeStruct((b, 2), jnp.uint32),
            {"image": jax.ShapeDtypeStruct((b, *shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32)})
    saved = _kept_bytes(lambda *a: summed(*a)[0], [0], *args)
    remat = bool(config.model.get("remat", False))
    blocks = list(_remat_blocks(jax.make_jaxpr(summed)(*args).jaxpr)) if remat else []
    recompute = max((_kept_bytes(
        jax.extend.core.jaxpr_as_fun(jax.extend.core.ClosedJaxpr(e.params["jaxpr"], [])),
        [i for i, v in enumerate(e.invars) if jnp.issubdtype(v.aval.dtype, jnp.inexact)],
        *(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in e.invars))
        for e in blocks), default=0)
    return {"saved": saved, "recompute": recompute}
