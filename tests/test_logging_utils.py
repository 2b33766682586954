"""What a user sees on long work: progress lines in a log file, a bar in a terminal that log
lines do not break, rates without paused time, a line around every compilation, and a
persistent compilation cache that a second process reads back."""

import gc
import io
import logging
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from training_helpers import ROOT, subprocess_env

from score_sde_jax import cli, logging_utils


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


def test_plain_lines_every_interval_with_rate_eta_and_loss(clock, caplog):
    caplog.set_level(logging.INFO)
    p = logging_utils.Progress(0, 1000, enabled=True, terminal=False, interval=30, desc="train")
    clock.now += 10
    p.update(20, loss=0.5)  # 10 s < 30 s: no line yet
    assert not caplog.records
    clock.now += 20
    p.update(60, loss=0.25)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "train: 60/1000 step (6%), 2 step/s, loss 0.25, 8 min left"
    p.close()


def test_rate_and_lines_leave_out_paused_time(clock, caplog):
    caplog.set_level(logging.INFO)
    p = logging_utils.Progress(0, 100, enabled=True, terminal=False, interval=1e9)
    clock.now += 5
    p.update(10)
    with p.paused("step 10: drawing samples"):
        with p.paused():  # nested (a compilation inside the sampling) counts once
            clock.now += 50
    clock.now += 5
    p.update(20)
    assert p.rate(20) == pytest.approx(2.0)  # 20 steps in 10 s of training, not 60 s
    clock.now += 4
    assert p.rate(28) == pytest.approx(2.0)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["step 10: drawing samples ...", "step 10: drawing samples: done in 50.0 s"]


def test_disabled_progress_writes_nothing(clock, caplog, capsys):
    caplog.set_level(logging.INFO)
    p = logging_utils.Progress(0, 10, enabled=False, terminal=True, interval=0)
    clock.now += 1
    p.update(5, loss=1.0)
    p.close()
    assert not caplog.records and capsys.readouterr().err == ""


def test_log_lines_are_written_above_the_bar_not_into_it(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging_utils._TqdmHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test_progress_bar")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    p = logging_utils.Progress(0, 50, enabled=True, terminal=True)
    p.update(7, loss=0.5)
    log.info("step 7: hello")
    p.update(9)
    p.close()
    out = stream.getvalue()
    assert "7/50" in out  # the bar was drawn
    lines = out.split("\n")
    (hello,) = [line for line in lines if "hello" in line]
    assert hello.split("\r")[-1] == "INFO step 7: hello"  # the bar was cleared before it


def test_announce_compile_logs_the_first_call_only(caplog):
    caplog.set_level(logging.INFO)
    p = logging_utils.Progress(0, 10, enabled=False)
    f = logging_utils.announce_compile(jax.jit(lambda x: x * 2), "doubler", p)
    assert float(f(jnp.float32(2))) == 4.0
    assert float(f(jnp.float32(3))) == 6.0
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "compiling the doubler ..."
    assert messages[1].startswith("compiled the doubler in ") and len(messages) == 2


def test_announce_compile_logs_the_compile_before_the_first_run(caplog):
    """The compile time is logged once the program is compiled, before it first runs (on CPU
    that run is synchronous, and a full-size train step takes seconds), with the cyclic garbage
    collector paused while it traces and compiles."""
    caplog.set_level(logging.INFO)
    events = []

    def record(x):
        events.append(("ran", gc.isenabled(), len(caplog.records)))
        return x

    def f(x):
        events.append(("traced", gc.isenabled()))
        return jax.pure_callback(record, jax.ShapeDtypeStruct((), jnp.float32), x * 2)

    g = logging_utils.announce_compile(jax.jit(f), "recorder")
    assert gc.isenabled()
    assert float(g(jnp.float32(2))) == 4.0
    logged = [r.getMessage().split(" in ")[0] for r in caplog.records]
    assert logged == ["compiling the recorder ...", "compiled the recorder"]
    assert events == [("traced", False), ("ran", True, 2)] and gc.isenabled()  # ran after both lines
    assert float(g(jnp.float32(3))) == 6.0 and len(caplog.records) == 2


def test_cyclic_gc_paused_restores_the_collector():
    assert gc.isenabled()
    with logging_utils.cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with logging_utils.cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # left off, as it was
    finally:
        gc.enable()


_COMPILE = """
import sys, time
from score_sde_jax import cli, logging_utils
path = cli.setup_compilation_cache(sys.argv[1], min_compile_secs=0)
import jax, jax.numpy as jnp
def f(x):
    for i in range(12):
        x = jnp.tanh(x @ x + i)
    return x
logging_utils.setup_logging()
g = logging_utils.announce_compile(jax.jit(f), "test program")
start = time.perf_counter()
g(jnp.ones((4, 4))).block_until_ready()
print(path, logging_utils._CACHE_HITS[0])
"""


def test_compilation_cache_is_written_then_read_by_a_second_process(tmp_path):
    cache = tmp_path / "cache"
    runs = [subprocess.run([sys.executable, "-c", _COMPILE, str(cache)], cwd=ROOT,
                           env=subprocess_env(XLA_FLAGS=""), capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert runs[0].stdout.split() == [str(cache), "0"]  # compiled, nothing to load yet
    assert any(p.name.startswith("jit_f-") for p in cache.iterdir())
    assert runs[1].stdout.split()[1] != "0"  # the second start loads it
    assert "loaded from the compilation cache" in runs[1].stderr
    assert "loaded from the compilation cache" not in runs[0].stderr


def test_cache_dir_default_env_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv(cli.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.default_cache_dir() == tmp_path / "score_sde_jax" / "jax"
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "mine"))
    assert cli.default_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(cli.CACHE_ENV, "off")
    assert cli.default_cache_dir() is None and cli.setup_compilation_cache() is None
