"""main.py as users run it: bad flags, config keys, modes and checkpoints are one-line errors
naming the culprit; a tiny train -> sample round trip works end to end."""

import subprocess
import sys

import numpy as np
import pytest
from training_helpers import ROOT, main_cmd, run_main, subprocess_env

TOY = f"--config={ROOT / 'configs' / 'toy_gmm.py'}"


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
                          env=subprocess_env(XLA_FLAGS=""), capture_output=True, text=True,
                          timeout=120)


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
    (("--class_label=1",), "--class_label needs --classifier_workdir"),
])
def test_controllable_sample_flags_are_checked(tmp_path, args, expected):
    out = _main(TOY, f"--workdir={tmp_path}", "--mode=sample", *args)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith(f"main.py: error: ValueError: {expected}")


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
