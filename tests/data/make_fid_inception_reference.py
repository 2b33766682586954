"""Make tests/data/fid_inception_reference.npz: pytorch-fid's own network on random weights.

Run once in an environment with torch, torchvision, pytorch-fid (0.3.0) and this package's
dependencies (jax, flax) -- none of them is needed to run the tests:

    PYTHONPATH=. python tests/data/make_fid_inception_reference.py

The weights are ``score_sde_jax.evaluation.inception.random_state_dict(SEED)`` (reproducible
from the seed, so they are not stored); pytorch-fid's ``fid_inception_v3`` is built with them
(its download is replaced by them, loaded with ``strict=True``), and its pool-3 features
(``InceptionV3`` wrapper: bilinear resize to 299, ``2x - 1``) and ``fc`` logits are stored
for a batch of 32x32 images and for one 320x40 image (down- and up-sampling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_fid.inception as pfi
import torch

from score_sde_jax.evaluation.inception import random_state_dict

SEED = 0
OUT = Path(__file__).with_name("fid_inception_reference.npz")


def smooth_images(rng: np.random.Generator, n: int, h: int, w: int, noise: float) -> np.ndarray:
    """uint8 (n, h, w, 3): random low-frequency colour fields plus ``noise`` N(0, 1)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((n, h, w, 3))
    for i in range(n):
        for c in range(3):
            a, b, f, g = rng.uniform(0, 2 * np.pi, 4)
            out[i, :, :, c] = 0.5 + 0.4 * np.sin(a + 3 * f * xx) * np.cos(b + 3 * g * yy)
    out += noise * rng.standard_normal(out.shape)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def main() -> None:
    state = {k: torch.from_numpy(v) for k, v in random_state_dict(SEED).items()}
    pfi.load_state_dict_from_url = lambda *args, **kwargs: state
    wrapper = pfi.InceptionV3([3]).eval()  # resize_input=True, normalize_input=True
    classifier = pfi.fid_inception_v3().eval()
    rng = np.random.default_rng(1)
    result = {"seed": np.int64(SEED)}
    for name, images in (("small", smooth_images(rng, 3, 32, 32, 0.05)),
                         ("large", smooth_images(rng, 1, 320, 40, 0.0))):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            pool = wrapper(x)[0][:, :, 0, 0]
            logits = classifier.fc(pool)
        result[f"{name}_images"] = images
        result[f"{name}_pool"] = pool.numpy()
        result[f"{name}_logits"] = logits.numpy()
    np.savez_compressed(OUT, **result)
    print(f"wrote {OUT}: " + ", ".join(f"{k} {v.shape}" for k, v in result.items()))


if __name__ == "__main__":
    main()
