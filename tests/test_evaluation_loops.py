"""Evaluation and sampling of checkpoints (evaluation.loops), checked against exact answers.

The network under test is ``ExactGaussian``: the exact score of the model N(0, s² I) for the
(centered) data, with s = exp(param ``log_s``) read from the checkpoint. Its bits/dim on any
data are known in closed form, and its samples have a known spread, so the whole path
checkpoint -> EMA params -> data pipeline -> ODE likelihood -> bits/dim is checked end to end.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # configs/ is imported from the repository root, as by main.py
    sys.path.insert(0, str(ROOT))

from training_helpers import tiny_toy_config  # noqa: E402

from configs.digits import get_config as digits_config  # noqa: E402
from score_sde_jax import (  # noqa: E402
    analytic,
    checkpoints,
    datasets,
    eval_lib,
    evaluation,
    inference,
    losses,
    prng,
    sde_lib,
    sharding,
    train_lib,
)
from score_sde_jax import files as eval_io  # noqa: E402
from score_sde_jax.evaluation import rounds, statistics  # noqa: E402
from score_sde_jax.models import utils as mutils  # noqa: E402

SIZE, NUM_IMAGES = 16, 12
S_EMA = {5: 0.5, 10: 0.4}  # the model's s in the EMA params of the checkpoints at steps 5, 10
S_RAW = 0.3  # s of the non-EMA params: must never be used
# one worker runs the module (make test: --dist loadgroup), so its module fixtures (workdir,
# evaluated: ~15 s) are built once, not on both workers
pytestmark = pytest.mark.xdist_group("evaluation_loops")


def test_the_module_runs_on_one_worker(request):
    """``make test`` runs pytest-xdist with ``--dist loadgroup`` so that this module (its group)
    runs on one worker, which builds its fixtures once. pytest-xdist marks a grouped test by
    its node id; with pytest 9.2 that mark no longer took (setup.cfg keeps pytest < 9.2)."""
    if not getattr(request.config.option, "loadgroup", False):  # set by pytest-xdist's workers
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@evaluation_loops"), request.node.nodeid


@mutils.register_model(name="exact_gaussian_test")
class ExactGaussian(nn.Module):
    """ε̂(x, 999 t) of the VP SDE for data N(0, s² I): ε̂ = −std_t · score_t(x) with
    score_t(x) = −x / (m_t² s² + std_t²)."""

    config: object

    @nn.compact
    def __call__(self, x, labels, train=False):
        log_s = self.param("log_s", lambda key: jnp.asarray(math.log(S_EMA[5]), jnp.float32))
        sde, _ = sde_lib.get_sde(self.config)
        t = labels / 999.0
        m = sde.mean_coeff(t)
        std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
        var = m**2 * jnp.exp(2 * log_s) + std**2
        return sde_lib.batch_mul(std / var, x)


def make_config(tmp: Path):
    config = digits_config()
    config.model.name = "exact_gaussian_test"
    config.model.num_scales = 50
    config.training.snapshot_freq = 5
    d = config.data
    d.source, d.path, d.dataset, d.image_size, d.num_channels = "npz", str(tmp / "data.npz"), \
        "NPZ", SIZE, 1
    d.prefetch = 0
    ev = config.eval
    ev.begin_ckpt, ev.end_ckpt = 1, 2
    ev.batch_size, ev.num_samples = 8, 12  # two rounds on 8 devices
    ev.enable_loss = ev.enable_bpd = ev.enable_sampling = True
    ev.bpd_dataset, ev.bpd_num_repeats = "test", 2
    ev.inception_path = str(tmp / "inception.npz")
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Checkpoints at steps 5 and 10 of the exact model, 12 digit images, random Inception."""
    tmp = tmp_path_factory.mktemp("eval")
    from sklearn.datasets import load_digits

    digits = load_digits().images[:NUM_IMAGES] / 16.0
    images = np.stack([np.asarray(Image.fromarray(np.uint8(255 * im)).resize((SIZE, SIZE)))
                       for im in digits])
    np.savez(tmp / "data.npz", image=images.astype(np.uint8), label=np.zeros(NUM_IMAGES, np.int32))
    np.savez(tmp / "inception.npz", **evaluation.random_state_dict(0))
    config = make_config(tmp)
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    snapshots = checkpoints.Checkpointer(tmp / "run" / "checkpoints")
    for step, s in S_EMA.items():
        log = lambda v: {"log_s": jnp.asarray(math.log(v), jnp.float32)}  # noqa: E731
        snapshots.save(state.replace(step=jnp.asarray(step, jnp.int32), params=log(S_RAW),
                                     params_ema=log(s)), config)
    snapshots.close()
    return tmp


def exact_bpd(x01: np.ndarray, s: float) -> np.ndarray:
    """bits/dim of data x in [0, 1)ᴰ under x ~ N(½, (s/2)² I) (the model in data space), + 8."""
    x = x01.reshape(len(x01), -1).astype(np.float64)
    sd = s / 2
    logp = -0.5 * np.sum((x - 0.5) ** 2, 1) / sd**2 - 0.5 * x.shape[1] * np.log(2 * np.pi * sd**2)
    return -logp / (x.shape[1] * np.log(2)) + 8.0


def dequantized(config, step: int, repeat: int) -> np.ndarray:
    """The test images as repeat ``repeat`` of checkpoint step ``step`` dequantizes them:
    (255 y + u) / 256 with u from the key of each image's position in the split."""
    y = np.concatenate([b["image"] for b in datasets.get_dataset(
        config, "test", evaluation=True, drop_remainder=False, uniform_dequantization=False)])
    key = jax.random.fold_in(eval_lib.sample_key(config, step, eval_lib.BPD_STREAM), repeat)
    keys = prng.split(prng.example_keys(key, np.arange(len(y))))[0]
    return np.asarray((255.0 * y + prng.uniform(keys, y.shape)) / 256.0)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def evaluated(workdir):
    """Everything on checkpoint 1; then checkpoints 1..2 without sampling (a second call that
    must reuse checkpoint 1's results). FID is costly on CPU, so it is computed once."""
    config = make_config(workdir)
    config.eval.end_ckpt = 1
    first = evaluation.evaluate(config, workdir / "run")
    config.eval.end_ckpt, config.eval.enable_sampling = 2, False
    second = evaluation.evaluate(config, workdir / "run")
    assert second[1] == {k: v for k, v in first[1].items()
                         if k in ("step", "loss", "bpd", "bpd_std")}
    config.eval.end_ckpt, config.eval.enable_sampling = 1, True
    return config, first | {2: second[2]}


def fid_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID for N1, N2 < D: with centered X (N, D), S = XᵀX / (N − 1) and the non-zero
    eigenvalues of S1 S2 are the squared singular values of X1 X2ᵀ / √((N1 − 1)(N2 − 1)), so
    tr (S1 S2)^½ is the sum of those singular values (no D x D matrix is formed)."""
    x1, x2 = (f - f.mean(0) for f in (f1.astype(np.float64), f2.astype(np.float64)))
    n1, n2 = len(f1) - 1, len(f2) - 1
    tr_sqrt = np.linalg.svd(x1 @ x2.T / np.sqrt(n1 * n2), compute_uv=False).sum()
    mean_diff = f1.mean(0) - f2.mean(0)
    return float(mean_diff @ mean_diff + (x1**2).sum() / n1 + (x2**2).sum() / n2 - 2 * tr_sqrt)


def test_bits_per_dim_equal_the_exact_model_density(evaluated, workdir):
    config, results = evaluated
    eval_dir = workdir / "run" / "eval"
    for k, step in ((1, 5), (2, 10)):
        saved = eval_io.read_npz(eval_dir / f"test_ckpt_{k}_bpd.npz")
        data = np.concatenate([dequantized(config, step, r) for r in range(2)])
        assert data.shape == (2 * NUM_IMAGES, SIZE, SIZE, 1)
        np.testing.assert_allclose(saved["bpd"], exact_bpd(data, S_EMA[step]), atol=2e-3)
        assert results[k]["bpd"] == pytest.approx(exact_bpd(data, S_EMA[step]).mean(), abs=1e-3)
    # fresh dequantization noise in each repeat
    assert not np.allclose(saved["bpd"][:NUM_IMAGES], saved["bpd"][NUM_IMAGES:])
    records = eval_io.read_jsonl(eval_dir / rounds.RESULTS_FILE)
    assert sorted((r["ckpt"], r["kind"]) for r in records) == [
        (1, "bpd"), (1, "loss"), (1, "samples"), (2, "bpd"), (2, "loss")]


def test_sample_rounds_statistics_and_report(evaluated, workdir):
    config, results = evaluated
    eval_dir = workdir / "run" / "eval"
    folder = eval_dir / "ckpt_1_host_0"
    files = [eval_io.read_npz(folder / f"samples_{r}.npz") for r in range(2)]
    samples = [f["samples"] for f in files]
    assert all(s.shape == (8, SIZE, SIZE, 1) and s.dtype == np.uint8 for s in samples)
    assert [f["indices"].tolist() for f in files] == [list(range(8)), list(range(8, 16))]
    assert not np.array_equal(samples[0], samples[1])  # each sample has its own key
    stats = [eval_io.read_npz(eval_dir / "ckpt_1" / f"round_{r}.npz") for r in range(2)]
    assert [s["pool"].shape for s in stats] == [(8, 2048)] * 2
    ref = evaluation.load_statistics(eval_dir / f"npz_{SIZE}_ref_stats.npz")
    assert ref["pool"].shape == (NUM_IMAGES, 2048) and ref["logits"].shape == (NUM_IMAGES, 1008)
    pool = np.concatenate([s["pool"] for s in stats])[:12]
    logits = np.concatenate([s["logits"] for s in stats])[:12]
    expected = {"fid": fid_low_rank(pool, ref["pool"]),
                "kid": evaluation.kid(pool, ref["pool"]),
                "inception_score": evaluation.inception_score(logits, splits=1)}
    report = eval_io.read_npz(eval_dir / "report_1.npz")
    for name in ("fid", "kid", "inception_score"):
        assert float(report[name]) == pytest.approx(expected[name], rel=1e-4)
        assert results[1][name] == pytest.approx(expected[name], rel=1e-4)
    assert expected["fid"] > 0 and expected["inception_score"] >= 1.0
    # the protocol: sample count, reference statistics and Inception weights
    assert int(report["num_samples"]) == 12 and int(report["ref_num_samples"]) == NUM_IMAGES
    assert str(report["ref_stats_path"]) == str(eval_dir / f"npz_{SIZE}_ref_stats.npz")
    assert str(report["inception_sha256"]) == eval_io.sha256(config.eval.inception_path)
    record = [r for r in eval_io.read_jsonl(eval_dir / rounds.RESULTS_FILE) if r["kind"] == "samples"]
    assert record[0]["inception_sha256"] == str(report["inception_sha256"])
    assert record[0]["quantize"] == "truncate" and record[0]["num_samples"] == 12


def test_eval_loss_is_the_training_objective_of_the_ema_weights(evaluated, workdir):
    config, results = evaluated
    sde, _ = sde_lib.get_sde(config)
    loss_fn = losses.get_step_loss(config, sde, mutils.get_model(config), train=False)
    params = {"log_s": jnp.asarray(math.log(S_EMA[5]), jnp.float32)}
    rng = eval_lib.sample_key(config, 5, eval_lib.LOSS_STREAM)
    scaler = datasets.get_data_scaler(config)
    ds = datasets.get_dataset(config, "test", evaluation=True, drop_remainder=False)
    examples = [(x, y) for b in ds for x, y in zip(scaler(b["image"]), b["label"], strict=True)]
    assert len(examples) == NUM_IMAGES
    values = [float(loss_fn(params, jax.random.fold_in(rng, i), {"image": x[None], "label": y[None]})[0])
              for i, (x, y) in enumerate(examples)]  # each example with its own key
    assert results[1]["loss"] == pytest.approx(np.mean(values), rel=1e-5)
    saved = eval_io.read_npz(workdir / "run" / "eval" / "ckpt_1_loss.npz")
    assert float(saved["mean_loss"]) == pytest.approx(np.mean(values), rel=1e-5)


def test_restart_skips_finished_work_and_redoes_only_missing_rounds(evaluated, workdir,
                                                                    monkeypatch):
    config, results = evaluated
    run, eval_dir = workdir / "run", workdir / "run" / "eval"
    before = mtimes(eval_dir)
    calls = {"sample": 0, "inception": 0}
    make_sampler, stats_fn = eval_lib.get_sample_fn, rounds.inception_features

    def counting_sampler(*args, **kwargs):
        fn = make_sampler(*args, **kwargs)

        def counted(params, rng, indices):
            calls["sample"] += 1
            return fn(params, rng, indices)
        return counted

    def counting_stats(*args, **kwargs):
        calls["inception"] += 1
        return stats_fn(*args, **kwargs)

    def cheap_metrics(stats, ref):  # the same numbers without the D x D eigendecompositions
        return {"inception_score": evaluation.inception_score(stats["logits"], splits=1),
                "fid": fid_low_rank(stats["pool"], ref["pool"]),
                "kid": evaluation.kid(stats["pool"], ref["pool"])}

    monkeypatch.setattr(eval_lib, "get_sample_fn", counting_sampler)
    monkeypatch.setattr(rounds, "inception_features", counting_stats)
    monkeypatch.setattr(evaluation, "metrics_from_statistics", cheap_metrics)
    assert evaluation.evaluate(config, run) == {1: results[1]}
    assert mtimes(eval_dir) == before and calls == {"sample": 0, "inception": 0}

    # an evaluation killed during round 1 (its samples written, its features not)
    folder = eval_dir / "ckpt_1_host_0"
    samples_0 = (folder / "samples_0.npz").stat().st_mtime_ns
    samples_1 = eval_io.read_npz(folder / "samples_1.npz")["samples"]
    (eval_dir / "ckpt_1" / "round_1.npz").unlink()
    (eval_dir / "report_1.npz").unlink()
    again = evaluation.evaluate(config, run)
    assert calls == {"sample": 1, "inception": 1}  # only round 1 redone
    assert (folder / "samples_0.npz").stat().st_mtime_ns == samples_0
    # round keys depend only on (checkpoint, round): the redone round has the same samples
    np.testing.assert_array_equal(eval_io.read_npz(folder / "samples_1.npz")["samples"], samples_1)
    for name in ("fid", "kid", "inception_score"):
        assert again[1][name] == pytest.approx(results[1][name], rel=1e-4)


def test_eight_devices_give_the_samples_bits_per_dim_and_report_of_one(evaluated, workdir):
    config, results = evaluated
    one = sharding.make_mesh(jax.devices()[:1])
    sde, eps = sde_lib.get_sde(config)
    build = eval_lib.score_fn_builder(config, sde)
    params = {"log_s": jnp.asarray(math.log(S_EMA[5]), jnp.float32)}
    out = {}
    for name, mesh in (("eight", sharding.make_mesh()), ("one", one)):
        fn = eval_lib.get_sample_fn(config, sde, build, 8, eps, mesh)
        out[name], _ = fn(sharding.replicate(params, mesh), eval_lib.sample_key(config, 5),
                          sharding.global_array(np.arange(8, 16), mesh))
    assert len(out["eight"].sharding.device_set) == 8 == jax.device_count()
    assert out["eight"].sharding.spec == PartitionSpec("data")
    assert float(np.max(np.abs(np.asarray(out["eight"]) - np.asarray(out["one"])))) <= 1e-5

    eval_dir = workdir / "run" / "eval"
    config = make_config(workdir)
    config.eval.end_ckpt = 1
    config.eval.ref_stats_path = str(eval_dir / f"npz_{SIZE}_ref_stats.npz")
    single = evaluation.evaluate(config, workdir / "run", "eval_one_device", mesh=one)
    assert single[1].keys() == results[1].keys()
    for name, value in results[1].items():
        assert single[1][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    other = workdir / "run" / "eval_one_device"
    # within the adaptive ODE solver's tolerance (eval.likelihood_rtol = 1e-5 of ~9 bits/dim):
    # the device count's rounding can move one accepted step of one example
    np.testing.assert_allclose(eval_io.read_npz(other / "test_ckpt_1_bpd.npz")["bpd"],
                               eval_io.read_npz(eval_dir / "test_ckpt_1_bpd.npz")["bpd"], atol=5e-5)
    for r in range(2):  # uint8 samples: at most one level apart where 255 x sits on a boundary
        a, b = (eval_io.read_npz(d / "ckpt_1_host_0" / f"samples_{r}.npz")["samples"]
                for d in (eval_dir, other))
        assert np.max(np.abs(a.astype(int) - b)) <= 1 and np.mean(a != b) < 0.01


def test_seeds_regenerate_the_samples_of_the_full_run(evaluated, workdir, tmp_path):
    config, _ = evaluated
    full = eval_io.read_npz(inference.sample(config, workdir / "run", 12, tmp_path, step=5)["npz"])
    paths = inference.sample(config, workdir / "run", None, tmp_path, step=5, seeds=[9, 3])
    assert paths["npz"].name == "samples_pc_step_5_seeds_9_3.npz"
    again = eval_io.read_npz(paths["npz"])
    assert again["seeds"].tolist() == [9, 3]
    assert np.max(np.abs(again["samples_float"] - full["samples_float"][[9, 3]])) <= 1e-5
    # and they are the evaluation's samples 9 and 3 (checkpoint 1 = step 5)
    evaluated_samples = eval_io.read_npz(workdir / "run" / "eval" / "ckpt_1_host_0" / "samples_1.npz")
    assert evaluated_samples["indices"][1] == 9
    assert np.max(np.abs(evaluated_samples["samples"][1].astype(int) - again["samples"][0])) <= 1
    assert inference.parse_seeds("0-3,9") == [0, 1, 2, 3, 9] and inference.parse_seeds("5") == [5]
    with pytest.raises(ValueError, match="--seeds='a-b'"):
        inference.parse_seeds("a-b")


def test_sample_holds_one_batch_and_merges_to_the_in_memory_result(evaluated, workdir, tmp_path,
                                                                   monkeypatch):
    """--mode sample writes each finished batch to a part file (never more than a batch in
    memory) and merges them into exactly the .npz and PNG the in-memory writer gives for the
    same samples; the part files are removed."""
    config, _ = evaluated
    parts, write = [], eval_io.savez_atomic

    def spy(path, **arrays):
        if ".parts-" in str(path):
            parts.append((Path(path), arrays["x"].copy()))
        return write(path, **arrays)

    monkeypatch.setattr(eval_io, "savez_atomic", spy)
    seeds = [5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10]  # any order: merged by seed
    paths = inference.sample(config, workdir / "run", None, tmp_path / "out", step=5, seeds=seeds)
    assert [len(x) for _, x in parts] == [8, 4]  # one part per batch of config.eval.batch_size
    assert {p.parent.name.split(".parts-")[0] for p, _ in parts} == {paths["npz"].stem}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [paths["npz"].name, paths["png"].name])  # the part files are gone
    old = eval_io.write_samples(tmp_path / "old" / "samples", np.concatenate([x for _, x in parts]),
                                seeds=np.asarray(seeds), nfe=eval_io.read_npz(paths["npz"])["nfe"])
    new, ref = eval_io.read_npz(paths["npz"]), eval_io.read_npz(old["npz"])
    assert sorted(new) == sorted(ref) == ["nfe", "samples", "samples_float", "seeds"]
    for key in ref:
        assert new[key].dtype == ref[key].dtype and np.array_equal(new[key], ref[key]), key
    assert np.array_equal(np.asarray(Image.open(paths["png"])), np.asarray(Image.open(old["png"])))
    full = eval_io.read_npz(inference.sample(config, workdir / "run", 12, tmp_path, step=5)["npz"])
    assert np.max(np.abs(new["samples_float"] - full["samples_float"][seeds])) <= 1e-5


def test_streamed_writer_equals_write_samples_and_caps_the_grid(tmp_path):
    """files.write_samples_stream from chunks: the arrays of files.write_samples; the grid shows
    the first GRID_MAX images only."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.1, 1.1, (eval_io.GRID_MAX + 6, 2, 2, 1)).astype(np.float32)
    streamed = eval_io.write_samples_stream(tmp_path / "s", lambda: (x[i:i + 100] for i in
                                                                     range(0, len(x), 100)),
                                            len(x), seeds=np.arange(len(x)))
    whole = eval_io.write_samples(tmp_path / "w", x, seeds=np.arange(len(x)))
    a, b = eval_io.read_npz(streamed["npz"]), eval_io.read_npz(whole["npz"])
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in b)
    first = eval_io.save_image_grid(np.clip(x[:eval_io.GRID_MAX], 0, 1), tmp_path / "first.png")
    assert np.array_equal(np.asarray(Image.open(streamed["png"])), np.asarray(Image.open(first)))


def test_eval_batch_size_must_divide_over_the_devices(workdir):
    config = make_config(workdir)
    config.eval.batch_size = 12
    with pytest.raises(ValueError, match=r"config.eval.batch_size=12 must be a multiple of the "
                                         r"number of devices \(8\)"):
        evaluation.evaluate(config, workdir / "run", "bad_batch")


def test_quantize_truncates_like_the_official_code_or_rounds_like_edm(workdir):
    config = make_config(workdir)
    x = datasets.get_data_scaler(config)(np.array([0.0, 0.2, 0.7, 254.6, 300.0], np.float32) / 255)
    assert np.asarray(statistics.quantize_fn(config)(x)).tolist() == [0, 0, 0, 254, 255]
    config.eval.quantize = "round"
    assert np.asarray(statistics.quantize_fn(config)(x)).tolist() == [0, 0, 1, 255, 255]
    config.eval.quantize = "nearest"
    with pytest.raises(ValueError, match="config.eval.quantize='nearest'"):
        statistics.quantize_fn(config)


def test_missing_inception_weights_fail_first_and_say_where_to_get_them(workdir, tmp_path):
    config = make_config(workdir)
    config.eval.inception_path = str(tmp_path / "nowhere.npz")
    with pytest.raises(FileNotFoundError, match="inception_path") as e:
        evaluation.evaluate(config, workdir / "run", eval_folder="other")
    assert evaluation.FID_WEIGHTS_URL in str(e.value)
    assert not (workdir / "run" / "other").exists()  # checked before the folder is made


def test_checkpoint_range_uses_snapshot_indices(workdir):
    config = make_config(workdir)
    config.eval.enable_loss = config.eval.enable_bpd = config.eval.enable_sampling = False
    config.eval.begin_ckpt, config.eval.end_ckpt = 2, 5  # 3..5 are not there: skipped
    assert evaluation.evaluate(config, workdir / "run", "range") == {2: {"step": 10}}
    config.eval.begin_ckpt = 3
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="begin_ckpt=3"):
        evaluation.evaluate(config, workdir / "run", "range")


def test_sample_writes_grid_and_npz_with_the_model_spread(workdir, tmp_path):
    config = make_config(workdir)
    paths = inference.sample(config, workdir / "run", 6, tmp_path)  # latest: step 10, s = 0.4
    assert paths["png"].name == "samples_pc_step_10.png"
    data = eval_io.read_npz(paths["npz"])
    assert data["samples"].shape == (6, SIZE, SIZE, 1) and data["samples"].dtype == np.uint8
    np.testing.assert_array_equal(data["samples"], eval_io.to_uint8(data["samples_float"]))
    # data space: N(1/2, (s/2)^2) per pixel; 1536 values give the spread to a few percent
    assert np.std(data["samples_float"]) == pytest.approx(0.2, rel=0.1)
    assert np.mean(data["samples_float"]) == pytest.approx(0.5, abs=0.03)
    with Image.open(paths["png"]) as im:  # 3 x 2 grid of 16 px images enlarged 11x (>= 512 px)
        assert im.size == (3 * (11 * 16 + 2) + 2, 2 * (11 * 16 + 2) + 2) and im.mode == "L"

    config.sampling.method = "ode"
    paths = inference.sample(config, workdir / "run", 8, tmp_path, step=5)  # s = 0.5
    assert paths["npz"].name == "samples_ode_step_5.npz"
    assert np.std(eval_io.read_npz(paths["npz"])["samples_float"]) == pytest.approx(0.25, rel=0.1)
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="steps there: \\[5, 10\\]"):
        inference.sample(config, workdir / "run", 2, tmp_path, step=7)


def test_toy_data_sample_scatter_and_sample_report(tmp_path):
    config = tiny_toy_config(**{"data.dataset": "GMM"})
    config.model.num_scales = 100
    config.eval.batch_size, config.eval.num_samples = 104, 200
    config.eval.enable_loss = config.eval.enable_bpd = False
    config.eval.begin_ckpt = config.eval.end_ckpt = 1
    config.data.toy_eval_size = 200
    state = train_lib.create_train_state(config, jax.random.PRNGKey(0))
    ckpt = checkpoints.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(state.replace(step=jnp.asarray(config.training.snapshot_freq, jnp.int32)), config)
    ckpt.close()
    paths = inference.sample(config, tmp_path, 150, tmp_path / "out")
    points = eval_io.read_npz(paths["npz"])["samples"]
    assert points.shape == (150, 2) and points.dtype == np.float32
    with Image.open(paths["png"]) as im:
        assert im.mode == "RGB" and np.asarray(im).min() < 128  # dots were drawn

    results = evaluation.evaluate(config, tmp_path)
    samples = np.concatenate([eval_io.read_npz(tmp_path / "eval" / "ckpt_1_host_0" /
                                               f"samples_{r}.npz")["samples"] for r in range(2)])[:200]
    from score_sde_jax.data import toy

    mixture = toy.gaussian_mixture_from_config(config.data)
    assert results[1]["gmm_log_prob"] == pytest.approx(
        float(jnp.mean(mixture.log_prob(jnp.asarray(samples)))), rel=1e-5)
    assert results[1]["sliced_wasserstein"] > 0


def test_bpd_offset_includes_the_scaler_log_det():
    config = digits_config()
    config.data.centered = True
    assert eval_lib.bpd_offset(config) == 7.0
    config.data.centered = False
    assert eval_lib.bpd_offset(config) == 8.0
    toy = tiny_toy_config()
    assert eval_lib.bpd_offset(toy) == 0.0
    toy.data.centered = True
    assert eval_lib.bpd_offset(toy) == -1.0


def test_image_grid_layout_and_atomic_files(tmp_path):
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) * 50 + 10
    grid = eval_io.image_grid(np.repeat(np.repeat(images, 2, 1), 3, 2), padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)  # 3 columns, 2 rows of 2x3 images
    assert grid[1, 1, 0] == 10 and grid[1, 5, 0] == 60 and grid[4, 5, 0] == 210
    assert grid[0].max() == 0 and grid[4, 9, 0] == 0  # padding and the empty sixth cell
    eval_io.savez_atomic(tmp_path / "a.npz", x=np.ones(3))
    assert os.listdir(tmp_path) == ["a.npz"]
    eval_io.append_jsonl(tmp_path / "r.jsonl", {"a": np.float32(1.5)})
    eval_io.append_jsonl(tmp_path / "r.jsonl", {"b": 2})
    assert [{k: v for k, v in r.items() if k != "time"}
            for r in eval_io.read_jsonl(tmp_path / "r.jsonl")] == [{"a": 1.5}, {"b": 2}]


def test_toy_report_uses_every_sample_and_the_whole_test_set():
    """The 2-D toy report compares all samples with all ``data.toy_eval_size`` test points, not
    the first ``eval.batch_size`` of each: the test set itself, shuffled, is at distance 0."""
    config = tiny_toy_config()
    config.eval.batch_size, config.data.toy_eval_size = 64, 1000
    data = np.concatenate([b["image"] for b in datasets.get_dataset(
        config, "test", evaluation=True, shard=(0, 1), drop_remainder=False)])
    assert len(data) == 1000
    shuffled = data[np.random.default_rng(0).permutation(len(data))]
    assert rounds._toy_report(config, shuffled)["sliced_wasserstein"] < 1e-5
    far = rounds._toy_report(config, shuffled[:500] + 1.0)["sliced_wasserstein"]
    whole = analytic.sliced_wasserstein(jax.random.PRNGKey(0), jnp.asarray(shuffled[:500] + 1.0),
                                        jnp.asarray(data))
    np.testing.assert_allclose(far, float(whole), rtol=1e-5)
