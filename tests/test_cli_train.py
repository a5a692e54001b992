"""``rattr train`` and `training.train`: clean stops, run directories, robust accuracy, header."""

import json
import os
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import training
from rattr_jax.cli import main
from rattr_jax.data import load_dataset

SMALL = ["--model", "mlp", "--dataset", "digits", "--max-train", "128", "--max-test", "64",
         "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def digits():
  return load_dataset("digits", seed=0)


def _small(**over):
  base = dict(model="mlp", dataset="digits", max_train=256, max_test=128, batch_size=32,
              activation="softplus:3", epochs=2)
  base.update(over)
  return training.preset("fast_cpu", **base)


def test_huge_loss_stops_as_diverged(tmp_path, digits):
  """A finite loss of 1e12 is not "trained": it stops at once, like a NaN."""
  def huge(ctx, batch, key):
    return jnp.where(ctx.step >= 3, 1e12, 0.0), {}
  terms = [training.cross_entropy_term(), training.LossTerm("huge", huge, 1.0)]
  res = training.train(_small(), dataset=digits, terms=terms, out_dir=str(tmp_path / "r"),
                       progress=False)
  assert res.status == "diverged"
  assert "diverged" in res.message and "global step 4" in res.message
  assert "none written" in res.message
  assert res.history == []
  log = json.loads((tmp_path / "r" / "log.json").read_text())
  assert log["status"] == "diverged"
  assert not (tmp_path / "r" / "curves.png").exists()


def test_existing_run_needs_resume_and_resume_needs_a_run(tmp_path, digits):
  out = str(tmp_path / "r")
  cfg = _small(epochs=1)
  assert training.train(cfg, dataset=digits, out_dir=out, progress=False).status == "completed"
  with pytest.raises(ValueError, match="already holds a training run"):
    training.train(cfg, dataset=digits, out_dir=out, progress=False)
  with pytest.warns(UserWarning, match="holds no checkpoint"):
    res = training.train(cfg, dataset=digits, out_dir=str(tmp_path / "new"), resume=True,
                         progress=False)
  assert res.status == "completed"
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ValueError, match="`out_dir`"):
    training.train(cfg, dataset=digits, out_dir=str(f), progress=False)


@pytest.mark.parametrize("field, value", [
    ("optimizer.learning_rate", float("inf")), ("optimizer.learning_rate", float("nan")),
    ("pgd.epsilon", float("inf")), ("pgd.epsilon", 1e9), ("hessian_norm.lam", float("nan")),
    ("optimizer.clip_norm", float("inf")), ("seed", -1), ("seed", 2**70), ("max_train", 0),
    ("max_train", -5), ("activation", "softplus:abc"), ("epochs", 0),
])
def test_config_rejects_out_of_domain_values(field, value):
  method = field.split(".")[0] if field.split(".")[0] in training.METHODS else None
  with pytest.raises(ValueError, match=field.split(".")[-1]):
    training.preset("fast_cpu", method=method, **{field: value})


@pytest.mark.slow
def test_cli_nan_stop_is_clean(tmp_path, capsys):
  out = tmp_path / "nan"
  rc = main(["train", *SMALL, "--epochs", "2", "--lr", "1e6", "--out", str(out)])
  assert rc == 3
  o, e = capsys.readouterr()
  text = o + e
  assert "Traceback" not in text
  stops = [l for l in text.splitlines() if "training stopped" in l]
  assert len(stops) == 1, text  # printed once
  assert "┏" not in o  # no empty table
  assert "curves.png" not in text  # never written, never named
  assert "Trained" not in text


@pytest.mark.slow
def test_cli_adversarial_training_reports_robust_accuracy(tmp_path, capsys):
  out = tmp_path / "pgd"
  rc = main(["train", *SMALL, "--method", "pgd", "--epsilon", "8/255", "--num-steps", "2",
             "--epochs", "1", "--out", str(out)])
  assert rc == 0
  o = capsys.readouterr().out
  assert "devices: 1 x cpu; data-parallel: no" in o and "effective batch 32" in o
  assert "epsilon 0.03137 = 8/255" in o
  robust = json.loads((out / "robust_accuracy.json").read_text())
  assert robust["epsilon"] == pytest.approx(8 / 255)
  assert robust["num_examples"] == 64
  assert 0.0 <= robust["robust_accuracy"] <= robust["clean_accuracy"] <= 1.0
  assert "robust test accuracy (PGD-10" in o
  # The config was stored in input units.
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["terms"] == [{"term": "pgd", "epsilon": pytest.approx(8 / 255), "num_steps": 2,
                           "step_size": 0.025, "input_range": [0.0, 1.0]}]
  # Running again into the same --out without --resume is refused before training.
  assert main(["train", *SMALL, "--method", "pgd", "--out", str(out)]) == 2
  assert "--resume" in capsys.readouterr().err
