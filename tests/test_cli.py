"""Bad input to every CLI is one line on stderr naming the problem (exit status 1), found
before anything is compiled or created; silent acceptance of odd data is a warning."""

import logging
import subprocess
import sys

import numpy as np
import pytest
from training_helpers import ROOT, subprocess_env, tiny_toy_config

from score_sde_jax import cli, convert, datasets
from score_sde_jax.evaluation import inception
from score_sde_jax.inference import controllable

DIGITS = f"--config={ROOT / 'configs' / 'digits.py'}"
HINT = " (SCORE_SDE_JAX_TRACEBACK=1 shows the traceback)"


def _run(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or subprocess_env(XLA_FLAGS="", SCORE_SDE_JAX_CACHE="off"),
                          timeout=120)


def _one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr.splitlines()[-1]


@pytest.fixture
def text_file(tmp_path):
    def make(name):
        path = tmp_path / name
        path.write_text("not what the name says\n")
        return path
    return make


# ----------------------------------------------------------------------------- main.py
def test_config_file_without_get_config(tmp_path):
    config = tmp_path / "noget.py"
    config.write_text("x = 1\n")
    line = _one_line(_run("main.py", f"--config={config}", f"--workdir={tmp_path}", "--mode=train"))
    assert line == (f"main.py: error: --config={config} has no get_config() function (a config "
                    "file defines get_config() returning an ml_collections.ConfigDict)")


def test_a_scalar_for_a_tuple_key_and_num_samples_zero(tmp_path):
    line = _one_line(_run("main.py", DIGITS, "--config.model.ch_mult=3", f"--workdir={tmp_path}",
                          "--mode=train"))
    assert line == ("main.py: error: --config.model.ch_mult=3: config.model.ch_mult is a tuple "
                    "(now (3,)); write --config.model.ch_mult='(3,)' for a single element")
    line = _one_line(_run("main.py", DIGITS, f"--workdir={tmp_path}", "--mode=sample",
                          "--num_samples=0"))
    assert line.startswith("main.py: error: flag --num_samples=0: ")
    assert not list(tmp_path.iterdir())


def test_bad_inputs_of_sample_and_train_name_the_file_and_create_nothing(tmp_path, text_file):
    fake_png, fake_npz = text_file("digit.png"), text_file("data.npz")
    line = _one_line(_run("main.py", DIGITS, f"--workdir={tmp_path / 'w'}", "--mode=sample",
                          f"--inpaint_image={fake_png}", f"--inpaint_mask={fake_png}"))
    assert line.startswith(f"main.py: error: ValueError: image file {fake_png} is not a "
                           "readable .png image")
    workdir = tmp_path / "run"
    line = _one_line(_run("main.py", DIGITS, f"--workdir={workdir}", "--mode=train",
                          "--config.data.source=npz", f"--config.data.path={fake_npz}"))
    assert line == (f"main.py: error: ValueError: {fake_npz} is not a readable .npz file: it is "
                    "neither a zip archive of arrays nor an array (a text file?)" + HINT)
    assert not workdir.exists()  # no empty checkpoints/, checkpoints-meta/, tensorboard/


def test_num_samples_for_inpainting_repeats_one_input_or_is_an_error():
    one, three = np.zeros((1, 8, 8, 1)), np.zeros((3, 8, 8, 1))
    assert controllable._draws(one, 5, "a.png").shape == (5, 8, 8, 1)
    assert controllable._draws(three, None, "a.npz").shape == (3, 8, 8, 1)
    assert controllable._draws(three, 3, "a.npz").shape == (3, 8, 8, 1)
    with pytest.raises(ValueError, match=r"--num_samples=5 but a.npz holds 3 inputs"):
        controllable._draws(three, 5, "a.npz")


# ----------------------------------------------------------------------------- data checks
def _npz_config(path, size=8):
    config = tiny_toy_config()
    config.data.source, config.data.path, config.data.dataset = "npz", str(path), "NPZ"
    config.data.image_size, config.data.num_channels = size, 1
    return config


def test_npz_of_another_size_is_resized_with_a_warning(tmp_path, caplog):
    path = tmp_path / "small.npz"
    np.savez(path, image=np.full((10, 5, 7), 200, np.uint8))
    with caplog.at_level(logging.WARNING):
        source = datasets.get_source(_npz_config(path), "train")
        datasets.get_source(_npz_config(path), "test")  # warned once per file and shape
    images, _ = source.get_batch([0, 1])
    assert images.shape == (2, 8, 8, 1)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == (f"{path}: images are 5x7; they are resized to 8x8 "
                       "(config.data.image_size=8), after a central square crop (the image is "
                       "not square)")
    caplog.clear()
    np.savez(tmp_path / "right.npz", image=np.zeros((4, 8, 8), np.uint8))
    with caplog.at_level(logging.WARNING):
        datasets.get_source(_npz_config(tmp_path / "right.npz"), "train")
    assert not caplog.records


def test_check_data_fails_on_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.data.path=.*no such .npz file"):
        datasets.check_data(_npz_config(tmp_path / "missing.npz"))


# ----------------------------------------------------------------------------- convert / inception
def _cli_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.strip()


def test_convert_errors_are_one_line(tmp_path, text_file, capsys):
    prog, digits = convert.PROG, str(ROOT / "configs" / "digits.py")
    missing, not_msgpack = str(tmp_path / "none"), str(text_file("checkpoint_7"))
    syntax, noget = tmp_path / "syntax.py", tmp_path / "noget.py"
    syntax.write_text("def get_config(:\n")
    noget.write_text("x = 1\n")
    cases = {
        (digits, missing): f"FileNotFoundError: checkpoint {missing} does not exist",
        (str(tmp_path / "no.py"), missing): f"FileNotFoundError: config file {tmp_path / 'no.py'} "
                                            "does not exist",
        (str(syntax), missing): "SyntaxError: invalid syntax (syntax.py, line 1)",
        (str(noget), missing): f"ValueError: config file {noget} has no get_config()",
        (digits, not_msgpack): f"ValueError: {not_msgpack} is not an official Flax checkpoint (a "
                               "msgpack file): ExtraData: unpack(b) received extra data.",
    }
    for (config, checkpoint), message in cases.items():
        err = _cli_error(convert.main, ["--config", config, "--checkpoint", checkpoint, "--out",
                                        str(tmp_path / "out")], capsys)
        assert err == f"{prog}: error: {message}{HINT}"
    assert not (tmp_path / "out").exists()


def test_inception_cli_errors_are_one_line_without_a_runpy_warning(tmp_path, text_file, capsys):
    fake = text_file("weights.npz")
    err = _cli_error(inception.main, ["convert", str(fake), str(tmp_path / "o.npz")], capsys)
    assert err.startswith(f"{inception.PROG}: error: ValueError: {fake} is not a readable .npz")
    out = _run("-m", "score_sde_jax.evaluation.inception", "convert", str(tmp_path / "no.pth"),
               str(tmp_path / "o.npz"))
    line = _one_line(out)
    assert line.startswith(f"{inception.PROG}: error: FileNotFoundError: FID Inception weights "
                           f"not found at '{tmp_path / 'no.pth'}'")
    assert "RuntimeWarning" not in out.stderr and len(out.stderr.splitlines()) == 1


def test_traceback_env_lets_the_exception_through(monkeypatch):
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="boom"):
        cli.run_cli("prog", lambda: (_ for _ in ()).throw(ValueError("boom")))


# Minor page faults of the last of four calls of a jitted function with a 128 MB temporary
# (the operand of a matrix-vector product), which XLA:CPU allocates for each execution.
_FAULTS = """
import resource, sys
from score_sde_jax import cli
kept = cli.keep_freed_host_memory() if sys.argv[1] == "keep" else None
import jax, jax.numpy as jnp
f = jax.jit(lambda x, v: jnp.sum((x * 2.0 + 1.0) @ v))
x, v = jnp.ones((32 * 1024, 1024), jnp.float32), jnp.ones((1024,), jnp.float32)
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(x, v))
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_keep_freed_host_memory_stops_the_page_faults_of_every_call():
    """With glibc's allocator as it is, each call maps its 128 MB temporary afresh (32 k pages
    faulted in); after ``keep_freed_host_memory()`` the freed block is reused."""
    runs = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, capture_output=True,
                             text=True, env=subprocess_env(XLA_FLAGS=""), timeout=120, check=True)
        runs[mode] = out.stdout.split()
    assert runs["keep"][0] == "True", runs
    assert int(runs["default"][1]) > 20_000, runs
    assert int(runs["keep"][1]) < 2_000, runs
