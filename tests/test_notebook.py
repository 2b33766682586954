"""The Colab notebook runs end to end (nbclient, CPU, its fast mode), so it cannot rot."""

import math
import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "score_sde_jax.ipynb"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_trains_samples_computes_bpd_and_inpaints(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel inherits this environment: one CPU device, the notebook's fast mode
    monkeypatch.setenv("SCORE_SDE_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("SCORE_SDE_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT),
                                                                   os.environ.get("PYTHONPATH")])))
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "CPU: 1 device(s)" in text
    first, last = map(float, re.search(r"300 steps .*loss ([\d.]+) -> ([\d.]+)", text).groups())
    assert last < first  # training lowered the loss
    assert (tmp_path / "run" / "checkpoints" / "300").is_dir()
    assert "checkpoint of step 300" in text
    pc_nfe = int(re.search(r"PC sampler: (\d+) score evaluations", text).group(1))
    assert pc_nfe == 2 * 100  # N = 100 steps of predictor + corrector
    assert 0 < int(re.search(r"ODE sampler: (\d+) score evaluations", text).group(1)) < 1000
    bpd = float(re.search(r"bits/dim on 16 test images: ([-\d.]+)", text).group(1))
    assert math.isfinite(bpd) and 0 < bpd < 16
    rms = float(re.search(r"decoded a 9-step slerp path \(\d+ NFE\); round-trip RMS error ([\d.e-]+)",
                          text).group(1))
    assert rms < 0.05  # pixels in [0, 1]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # PC samples, ODE samples, inpainting, interpolation
