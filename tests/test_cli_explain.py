"""`rattr explain` and `rattr attack` end to end on the embedded dataset (small settings)."""

import json
import os

import pytest

from rattr_jax.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("method_args, methods", [
    (["--num-steps", "8", "--num-samples", "4"],
     {"gradient", "integrated_gradients", "smoothgrad"}),
    (["--method", "gradient", "--method", "decoy"], {"gradient", "decoy"}),
], ids=["default_methods", "decoy"])
def test_explain_writes_png_and_json(tmp_path, method_args, methods):
  out = tmp_path / "explain"
  rc = main(["explain", "--epochs", "1", "--num-images", "2", *method_args, "--out", str(out)])
  assert rc == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["test_accuracy"] > 0.8
  assert set(summary["methods"]) == methods
  assert os.path.getsize(out / "saliency_grid.png") > 10_000


def test_explain_bad_args(tmp_path, capsys):
  assert main(["explain", "--epochs", "0", "--out", str(tmp_path)]) == 2
  assert "--epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_attack_writes_png_json_and_keeps_labels(tmp_path):
  out = tmp_path / "attack"
  rc = main(["attack", "--epochs", "1", "--num-steps", "10", "--num-eval", "4",
             "--num-images", "2", "--out", str(out)])
  assert rc == 0
  summary = json.loads((out / "attack.json").read_text())
  assert set(summary["metrics"]) == {"random_sign", "topk", "mass_center"}
  for row in summary["metrics"].values():
    assert row["label_kept"] == 1.0
    assert row["max_linf_255"] <= 8.0 + 1e-3
    assert 0.0 <= row["topk_intersection"] <= 1.0
  with open(out / "attack.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(out / "attack.png") > 10_000


def test_attack_bad_args(tmp_path, capsys):
  assert main(["attack", "--epsilon", "-1", "--out", str(tmp_path)]) == 2
  assert "epsilon" in capsys.readouterr().err
