"""``rattr senn-report`` end to end on a tabular set, and its robust summaries."""

import json

import numpy as np
import pytest

from rattr_jax.cli import main


def test_dead_concepts_are_the_constant_ones():
  from rattr_jax.senn import _report as R
  assert R.dead_concepts([1e-17, 0.3, 0.0, 2e-9, np.nan, 1e-3]) == [0, 2, 3, 4]
  assert R.dead_concepts([0.1, 0.2]) == []


def test_iqr_cell():
  from rattr_jax.cli._senn_report import _iqr
  assert _iqr({"median": 38.0, "q25": 5.5, "q75": 5.47e7, "n": 10}) == "38 [5.5, 5.47e+07]"
  assert _iqr({"median": float("nan"), "q25": float("nan"), "q75": float("nan"), "n": 0}) == "–"


@pytest.mark.slow
def test_senn_report_tabular(tmp_path, capsys):
  out = tmp_path / "senn"
  rc = main(["senn-report", "--dataset", "breast_cancer", "--lambdas", "1e-3,1", "--epochs", "2",
             "--num-eval", "8", "--blackbox-epochs", "2", "--out", str(out)])
  assert rc == 0
  o = capsys.readouterr().out
  assert "…" not in o and "nan" not in o.lower()
  assert "median [25%, 75%]" in o and "dead concepts" in o
  assert "post-hoc stability: 3/3 methods (100%)" in o  # progress line per method
  assert "lambda=1: stability and faithfulness on 8 test points" in o
  s = json.loads((out / "senn_report.json").read_text())
  assert s["blackbox"]["epochs"] == 2
  for r in s["runs"]:
    assert isinstance(r["dead_concepts"], list)
    assert r["stability"]["q25"] <= r["stability"]["median"] <= r["stability"]["q75"]
  assert set(s["figures"]) == {"explanation", "training", "tradeoff"}
