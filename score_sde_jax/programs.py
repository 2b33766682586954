"""A step made of several XLA programs that keeps the stages of one jitted function: call it,
or ``lower(*args)`` → ``compile()`` → call, ``as_text()`` (what ``logging_utils.announce_compile``
and the benchmarks use).

- :class:`TwoPrograms`: ``(state, batch) -> second(state, *first(state, batch))``; the two
  compile at once on two threads.
- :class:`Repeated`: ``(state, batches (n, B, ...)) -> (state, metrics (n, ...))``, one
  ``(state, batch) -> (state, metrics)`` step called n times in a host loop.

Why (XLA:CPU, BENCHMARKS.md sections 4 and 13): its compile time grows faster than a program's
size, so a train step compiles faster as its gradient and its update (CIFAR-10 DDPM++: 16.7 →
12.5 s), and n updates faster as n calls of one (5 updates unrolled: 113 s against 13 s).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


class TwoPrograms:
    """``(state, batch) -> second(state, *first(state, batch))`` for two jitted programs:
    ``lower(state, batch)`` lowers both (the second for the first's outputs), ``compile()``
    compiles both at once on two threads, ``as_text()`` joins their HLO."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def __call__(self, state: Any, batch: Any) -> tuple[Any, Any]:
        return self.second(state, *self.first(state, batch))

    def lower(self, state: Any, batch: Any) -> TwoPrograms:
        first = self.first.lower(state, batch)
        return TwoPrograms(first, self.second.lower(state, *first.out_info))

    def compile(self) -> TwoPrograms:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return TwoPrograms(*pool.map(lambda p: p.compile(), (self.first, self.second)))

    def as_text(self) -> str:
        return self.first.as_text() + "\n" + self.second.as_text()


class Repeated:
    """``(state, batches) -> (state, metrics)``: ``step(state, batches[i])`` for i = 0 .. n − 1
    in a host loop, each call's state passed to the next, the metrics stacked (n, ...). The
    batches' leaves are (n, B, ...); ``take(batches, i)`` picks update i's batch (a jitted
    function placing it as ``step`` expects). ``lower`` / ``compile`` / ``as_text`` are the
    step's (one program, or :class:`TwoPrograms`), for a batch of (B, ...)."""

    def __init__(self, step: Any, n: int, take: Callable) -> None:
        self.step, self.n, self.take = step, n, take

    def __call__(self, state: Any, batches: Any) -> tuple[Any, Any]:
        metrics = []
        for i in range(self.n):
            state, m = self.step(state, self.take(batches, i))
            metrics.append(m)
        return state, jax.tree_util.tree_map(lambda *m: jnp.stack(m), *metrics)

    def lower(self, state: Any, batches: Any) -> Repeated:
        one = jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), batches)
        return Repeated(self.step.lower(state, one), self.n, self.take)

    def compile(self) -> Repeated:
        return Repeated(self.step.compile(), self.n, self.take)

    def as_text(self) -> str:
        return self.step.as_text()
