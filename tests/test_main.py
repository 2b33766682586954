"""main.py as users run it: bad flags, config keys, modes and checkpoints are one-line errors
naming the culprit; a tiny train -> sample round trip works end to end. ``make bench`` runs
only scripts that need no argument."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest
from training_helpers import ROOT, main_cmd, run_main, subprocess_env

TOY = f"--config={ROOT / 'configs' / 'toy_gmm.py'}"


def _main(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
                          env=subprocess_env(XLA_FLAGS=""), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args,expected", [
    ((TOY, "--workdir=w", "--mode=bogus"),
     "main.py: error: flag --mode=bogus: value should be one of <train|eval|sample|encode|interpolate>"),
    ((TOY, "--workdir=w", "--mode=train", "--bogus=3"),
     "main.py: error: Unknown command line flag 'bogus'"),
    ((TOY, "--config.training.batchsize=8", "--workdir=w", "--mode=train"),
     "main.py: error: unknown config key 'batchsize' in --config.training.batchsize=8 "
     "(did you mean 'batch_size'?)"),
    ((TOY, "--config.training.batch_size=eight", "--workdir=w", "--mode=train"),
     "main.py: error: flag --config.training.batch_size=eight: invalid literal for int() with "
     "base 10: 'eight'"),
    (("--config=configs/nope.py", "--workdir=w", "--mode=train"),
     "main.py: error: --config=configs/nope.py: no such config file"),
    (("--workdir=w", "--mode=train"),
     "main.py: error: flag --config=None: Flag --config must have a value other than None."),
])
def test_bad_command_lines_are_one_line_errors(args, expected):
    out = _main(*args)
    assert out.returncode == 1
    assert out.stderr == expected + "\n"


@pytest.mark.parametrize("args,expected", [
    (("--inpaint_image=a.png", "--colorize_image=b.png"),
     "choose one of --inpaint_image, --colorize_image, --class_label; "
     "got ['inpaint_image', 'colorize_image']"),
    (("--inpaint_mask=m.png",), "--inpaint_mask needs --inpaint_image"),
    (("--inpaint_image=a.png",), "--inpaint_image needs --inpaint_mask"),
    (("--class_label=1",), "--class_label=1: the network of this config has no classes"),
])
def test_controllable_sample_flags_are_checked(tmp_path, args, expected):
    out = _main(TOY, f"--workdir={tmp_path}", "--mode=sample", *args)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith(f"main.py: error: ValueError: {expected}")


_NO_JAX = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path("main.py", run_name="__main__")
except SystemExit as e:
    print(e.code, "jax" in sys.modules)
"""


@pytest.mark.parametrize("args,expected", [
    (("--mode=sample", "--seeds=0-3", "--num_samples=8"),
     "ValueError: --seeds and --num_samples exclude each other"),
    (("--mode=sample", "--inpaint_mask=m.png"), "ValueError: --inpaint_mask needs --inpaint_image"),
    (("--mode=encode",), "ValueError: --mode=encode needs --images"),
    (("--mode=train", "--workdir="), "ValueError: --workdir='' is empty"),
    (("--mode=eval", "--workdir=README.md"), "NotADirectoryError: --workdir=README.md is an existing file"),
])
def test_flag_and_folder_errors_come_before_jax_is_imported(tmp_path, args, expected):
    """main.check_flags: a wrong command line or an unusable folder is reported in ~0.1 s,
    without importing JAX (and the ~1.5 s that takes)."""
    workdir = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path}"]
    out = subprocess.run([sys.executable, "-c", _NO_JAX, "main.py", TOY, *workdir, *args], cwd=ROOT,
                         env=subprocess_env(XLA_FLAGS=""), capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["1", "False"], (out.stdout, out.stderr[-2000:])
    assert out.stderr.splitlines()[-1].startswith(f"main.py: error: {expected}"), out.stderr[-2000:]


def test_bad_config_value_is_a_one_line_error(tmp_path):
    out = _main(TOY, "--config.training.sde=vp", f"--workdir={tmp_path}", "--mode=train")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[-1].startswith("main.py: error: ValueError: config.training.sde='vp' is not one of")
    assert not any("Traceback" in line for line in lines)


def test_train_then_sample_then_a_mismatched_config(tmp_path):
    trained = run_main(tmp_path, env=subprocess_env(XLA_FLAGS=""), **{"training.n_iters": 10})
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "finished at step 10" in trained.stderr

    sample_dir = tmp_path / "drawn"
    sampled = subprocess.run(
        [*main_cmd(tmp_path, mode="sample", **{"model.num_scales": 50}), "--num_samples=16",
         f"--sample_dir={sample_dir}"], cwd=ROOT, env=subprocess_env(XLA_FLAGS=""),
        capture_output=True, text=True, timeout=120)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    (npz,) = sample_dir.glob("*.npz")
    with np.load(npz) as f:  # the paths, plainly, with the NFE
        assert sampled.stdout == (f"wrote {npz} and {npz.with_suffix('.png')}: 16 samples, "
                                  f"{int(f['nfe'][0])} NFE per batch\n")
    samples = np.load(npz)["samples"]
    assert samples.shape == (16, 2) and np.isfinite(samples).all()
    # --seeds regenerates samples of that run by number
    again = subprocess.run(
        [*main_cmd(tmp_path, mode="sample", **{"model.num_scales": 50}), "--seeds=3,9-10",
         f"--sample_dir={sample_dir}"], cwd=ROOT, env=subprocess_env(XLA_FLAGS=""),
        capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    with np.load(sample_dir / "samples_pc_step_10_seeds_3_9_10.npz") as f:
        np.testing.assert_allclose(f["samples"], samples[[3, 9, 10]], rtol=1e-5, atol=1e-5)
    # A few-step sampler and its step count from the command line.
    fast = subprocess.run(
        [*main_cmd(tmp_path, mode="sample", **{"sampling.method": "dpm_solver", "sampling.num_steps": 6,
                                               "sampling.noise_removal": False}),
         "--num_samples=16", f"--sample_dir={sample_dir}"], cwd=ROOT, env=subprocess_env(XLA_FLAGS=""),
        capture_output=True, text=True, timeout=120)
    assert fast.returncode == 0, fast.stderr[-3000:]
    with np.load(sample_dir / "samples_dpm_solver_step_10.npz") as f:
        assert f["nfe"].tolist() == [6] and f["samples"].shape == (16, 2)

    mismatched = run_main(tmp_path, env=subprocess_env(XLA_FLAGS=""),
                          **{"training.n_iters": 20, "model.nf": 16})
    assert mismatched.returncode == 1
    error = mismatched.stderr.splitlines()[-1]
    assert error.startswith(f"main.py: error: CheckpointMismatchError: checkpoint "
                            f"{tmp_path / 'checkpoints-meta' / '10'} does not fit the model")
    assert "model.nf=32 (now 16)" in error
    assert "Traceback" not in mismatched.stderr


def test_classifier_free_guidance_from_the_command_line(tmp_path):
    """The README's toy commands: train configs/toy_gmm_cfg.py (label-conditional MLP, label
    dropout 0.1) and sample class 0 with guidance w = 1: >= 95 % of the samples are class 0 for
    the exact Bayes classifier, more than without guidance (w = 0; exact samples: ~92 %)."""
    import jax.numpy as jnp

    from configs.toy_gmm_cfg import get_config
    from score_sde_jax.data.toy import gaussian_mixture_from_config

    rel = os.path.relpath(tmp_path / "cfg", ROOT)
    tiny = ["--config.model.nf=64", "--config.model.num_layers=2", "--config.model.num_scales=100",
            "--config.model.ema_rate=0.9", "--config.optim.lr=3e-3", "--config.optim.warmup=20",
            "--config.data.prefetch=0"]
    train = _main("--config=configs/toy_gmm_cfg.py", f"--workdir={rel}", "--mode=train", *tiny,
                  "--config.training.batch_size=256", "--config.training.n_iters=300",
                  "--config.training.snapshot_freq=300", "--config.training.log_freq=100",
                  "--config.training.eval_freq=300", "--config.training.snapshot_sampling=False",
                  "--config.training.snapshot_freq_for_preemption=300", timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    mixture = gaussian_mixture_from_config(get_config().data)
    acc = []
    for w in (0.0, 1.0):
        out = _main("--config=configs/toy_gmm_cfg.py", f"--workdir={rel}", "--mode=sample", *tiny,
                    "--class_label=0", "--num_samples=2000", f"--config.sampling.cfg_scale={w}",
                    f"--sample_dir={rel}/w{w}", "--config.eval.batch_size=2000", timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "samples_pc_step_300_class_0.npz" in out.stdout
        x = np.load(tmp_path / "cfg" / f"w{w}" / "samples_pc_step_300_class_0.npz")["samples"]
        acc.append(float(jnp.mean(mixture.posterior_class(jnp.asarray(x)) == 0)))
    assert acc[1] >= 0.95 and acc[1] > acc[0] + 0.02, acc
    bad = _main("--config=configs/toy_gmm_cfg.py", f"--workdir={rel}", "--mode=sample", *tiny,
                "--class_label=3")
    assert bad.returncode == 1 and bad.stderr.splitlines()[-1].startswith(
        "main.py: error: ValueError: --class_label=3 is not a class of the network (0 .. 2")


def test_make_bench_runs_every_standalone_script_and_only_those():
    """``make bench`` loops over the bench/ scripts that run as they are: each has a main and no
    required argument; every other script with a main needs one (``--official``, ``--out``)."""
    out = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    listed = {w for line in out.stdout.splitlines() if line.startswith("for f in")
              for w in line.replace(";", " ").split() if w.startswith("bench/")}

    def kind(path):
        tree = ast.parse(path.read_text())
        has_main = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)
        required = any(isinstance(n, ast.keyword) and n.arg == "required"
                       and getattr(n.value, "value", False) is True for n in ast.walk(tree))
        return has_main, required

    scripts = {f"bench/{p.name}": kind(p) for p in (ROOT / "bench").glob("*.py")}
    assert listed == {p for p, (main, required) in scripts.items() if main and not required}
    assert len(listed) >= 15 and "bench/two_programs.py" in listed
