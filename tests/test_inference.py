"""inference/: the modes that draw from a trained checkpoint run over every device, and give
the same results on 1 and 8 devices (each image / sample from its own key, one ODE solve per
image when encoding and decoding)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from training_helpers import tiny_toy_config

from score_sde_jax import analytic, inference, run_lib, sharding


def test_encode_on_8_devices_equals_1_device(tmp_path, x64):
    """Encoding and decoding (interpolation decodes with the same code path) over the mesh, in
    float64, so that what is compared is the algorithm, not float32 rounding (which the adaptive
    ODE amplifies to ~1e-4 in this barely trained flow)."""
    config = tiny_toy_config(**{"training.n_iters": 10, "data.dataset": "GMM",
                                "eval.batch_size": 8, "model.dtype": "float64"})
    run = tmp_path / "run"
    run_lib.train(config, run, mesh=sharding.make_mesh(jax.devices()[:1]))
    points = np.asarray(analytic.default_mixture().sample(jax.random.PRNGKey(0), 11), np.float32)
    np.savez(tmp_path / "points.npz", x=points)  # 11 rows: two batches of 8, the last padded
    meshes = {"8": sharding.make_mesh(), "1": sharding.make_mesh(jax.devices()[:1])}
    assert meshes["8"].devices.size == 8
    latents = {}
    for name, mesh in meshes.items():
        out = inference.encode(config, run, str(tmp_path / "points.npz"), tmp_path / name, mesh=mesh)
        latents[name] = np.load(out["npz"])
    a, b = latents["8"], latents["1"]
    assert a["latents"].shape == (11, 2) and np.all(np.isfinite(a["latents"]))
    np.testing.assert_allclose(a["latents"], b["latents"], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(a["nfe"], b["nfe"])  # the same solver steps, image by image
    # decodings are written as float32: equal to its precision
    np.testing.assert_allclose(a["roundtrip_rms"], b["roundtrip_rms"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a["decode_nfe"], b["decode_nfe"])


def test_labels_of_a_conditional_model_follow_the_sample_number():
    """--mode sample / eval of a label-conditional model: sample i is of class i mod K (so
    --seeds regenerates it), or of --class_label; an unconditional model refuses a class."""
    from configs.toy_gmm_cfg import get_config as cfg_config
    from score_sde_jax import eval_lib

    config = cfg_config()
    indices = jax.numpy.arange(7, 14)
    np.testing.assert_array_equal(eval_lib.sample_labels(config, indices), np.arange(7, 14) % 3)
    np.testing.assert_array_equal(eval_lib.sample_labels(config, indices, 2), np.full(7, 2))
    with pytest.raises(ValueError, match=r"--class_label=3 is not a class of the network \(0 .. 2"):
        eval_lib.sample_labels(config, indices, 3)
    plain = tiny_toy_config()
    assert eval_lib.sample_labels(plain, indices) is None
    with pytest.raises(ValueError, match="--class_label=1: the network of this config has no classes"):
        eval_lib.sample_labels(plain, indices, 1)
