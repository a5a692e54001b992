"""Executes every notebook in `notebooks/` (nbclient), as CI does.

A notebook that raises, or runs past its time limit, fails the test. Plots are
rendered by the kernel's inline backend
(set ``RATTR_KEEP_NOTEBOOKS=DIR`` to keep the executed notebooks).
"""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
TIMEOUT_PER_CELL_S = 600


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders PNGs
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=TIMEOUT_PER_CELL_S, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  if os.environ.get("RATTR_KEEP_NOTEBOOKS"):
    nbformat.write(nb, Path(os.environ["RATTR_KEEP_NOTEBOOKS"]) / path.name)
  errors = [o for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors, errors
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, "the notebook rendered no figure"
