"""`rattr explain` end to end on the embedded dataset (small settings)."""

import json
import os

import pytest

from rattr_jax.cli import main


@pytest.mark.slow
def test_explain_writes_png_and_json(tmp_path):
  out = tmp_path / "explain"
  rc = main(["explain", "--epochs", "1", "--num-images", "2", "--num-steps", "8",
             "--num-samples", "4", "--out", str(out)])
  assert rc == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["test_accuracy"] > 0.8
  assert set(summary["methods"]) == {"gradient", "integrated_gradients", "smoothgrad"}
  assert os.path.getsize(out / "saliency_grid.png") > 10_000


def test_explain_bad_args(tmp_path, capsys):
  assert main(["explain", "--epochs", "0", "--out", str(tmp_path)]) == 2
  assert "--epochs" in capsys.readouterr().err
