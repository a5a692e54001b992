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
def test_explain_tabular_uses_feature_names(tmp_path, capsys):
  out = tmp_path / "wine"
  rc = main(["explain", "--dataset", "wine", "--epochs", "5", "--num-images", "2",
             "--method", "gradient", "--method", "ig", "--num-steps", "8", "--out", str(out)])
  assert rc == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["model"] == "mlp"
  assert summary["figure"].endswith("attributions.png") and os.path.exists(summary["figure"])
  from sklearn.datasets import load_wine
  from rattr_jax.data import load_dataset
  assert load_dataset("wine").feature_names == tuple(load_wine().feature_names)
  assert "wrote" in capsys.readouterr().out


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
    assert row["max_linf"] <= 8 / 255 + 1e-6
    assert 0.0 <= row["topk_intersection"] <= 1.0
  with open(out / "attack.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(out / "attack.png") > 10_000


def test_attack_bad_args(tmp_path, capsys):
  assert main(["attack", "--epsilon", "-1", "--out", str(tmp_path)]) == 2
  assert "epsilon" in capsys.readouterr().err


def test_tables_never_truncate_and_mark_missing(capsys):
  from rattr_jax.cli import _common
  _common.print_table("t", ["lambda", "a very long header called Spearman correlation", "x"],
                      [["1e-4", 5.47e7, float("nan")], ["post-hoc smoothgrad", None, 0.123456]])
  out = capsys.readouterr().out  # captured: not a terminal
  assert "…" not in out
  assert "5.47e+07" in out and "a very long header called Spearman correlation" in out
  assert "post-hoc smoothgrad" in out and "0.1235" in out
  assert out.count(_common.MISSING) == 2 and "nan" not in out.lower()
  _common.print_table("empty", ["a"], [])
  assert capsys.readouterr().out == ""


def test_progress_prints_lines_when_not_a_terminal(capsys):
  from rattr_jax.cli import _common
  with _common.Progress("attack topk", 40, unit=" images") as p:
    for _ in range(40):
      p.advance(1)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 10  # one per 10 %
  assert lines[0].startswith("attack topk: 4/40 images (10%)") and "ETA" in lines[0]
  assert lines[-1].startswith("attack topk: 40/40 images (100%)")
