"""From unit files to ``scores.csv``, and from ``scores.csv`` to the summary and claims.

Every aggregate is a function of the rows of ``scores.csv`` alone
(`summarize`), so ``summary.csv`` can be recomputed from the scores file
(`summarize_file`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict

import numpy as np

from rattr_jax.study import _config as C
from rattr_jax.study import _eval as E
from rattr_jax.study import _run as R
from rattr_jax.study import _stats as S

SCORE_COLUMNS = ("method", "seed", "explainer", "attack", "metric", "epsilon", "example", "value",
                 "higher_is_better")
SUMMARY_COLUMNS = ("method", "explainer", "attack", "metric", "epsilon", "n", "mean", "ci_low",
                   "ci_high", "higher_is_better", "baseline", "median_diff_vs_baseline",
                   "p_value", "p_holm", "vs_baseline")
ALPHA = 0.05


def collect_rows(plan: list[dict], runs, config: C.StudyConfig) -> list[dict]:
  """Long-format rows (one per value) from the unit files in ``plan``."""
  rows = []
  for item in plan:
    _, arrs = R.load_unit(item["path"])
    for key, vals in arrs.items():
      if not key.startswith("score/"):
        continue
      metric = key[len("score/"):]
      for i, v in enumerate(np.asarray(vals, np.float64)):
        rows.append({"method": item["label"], "seed": item["seed"],
                     "explainer": item["explainer"], "attack": item["attack"], "metric": metric,
                     "epsilon": "" if item["epsilon"] is None else repr(float(item["epsilon"])),
                     "example": i, "value": float(v),
                     "higher_is_better": E.HIGHER_IS_BETTER[metric]})
  for r in runs:
    if r.status == "completed":
      rows.append({"method": r.label, "seed": r.seed, "explainer": "", "attack": "",
                   "metric": "train_time", "epsilon": "", "example": -1,
                   "value": float(r.train_time), "higher_is_better": False})
  return rows


def write_scores(path: str, rows: list[dict]) -> None:
  def w(tmp):
    with open(tmp, "w", newline="") as f:
      wr = csv.writer(f)
      wr.writerow(SCORE_COLUMNS)
      for r in rows:
        wr.writerow([r["method"], r["seed"], r["explainer"], r["attack"], r["metric"],
                     r["epsilon"], r["example"], repr(float(r["value"])),
                     "higher" if r["higher_is_better"] else "lower"])
  R._atomic_write(path, w)


def read_scores(path: str) -> list[dict]:
  rows = []
  with open(path, newline="") as f:
    for r in csv.DictReader(f):
      rows.append({"method": r["method"], "seed": int(r["seed"]), "explainer": r["explainer"],
                   "attack": r["attack"], "metric": r["metric"], "epsilon": r["epsilon"],
                   "example": int(r["example"]), "value": float(r["value"]),
                   "higher_is_better": r["higher_is_better"] == "higher"})
  return rows


def _groups(rows):
  """``(method, explainer, attack, metric, epsilon) -> {seed: {example: value}}``."""
  g: dict = defaultdict(lambda: defaultdict(dict))
  hib = {}
  for r in rows:
    k = (r["method"], r["explainer"], r["attack"], r["metric"], r["epsilon"])
    g[k][r["seed"]][r["example"]] = r["value"]
    hib[r["metric"]] = r["higher_is_better"]
  return g, hib


def _matrix(cell: dict) -> np.ndarray:
  """``{seed: {example: v}}`` -> ``[S, N]`` (NaN where missing)."""
  seeds = sorted(cell)
  ex = sorted({e for s in seeds for e in cell[s]})
  m = np.full((len(seeds), len(ex)), np.nan)
  for i, s in enumerate(seeds):
    for j, e in enumerate(ex):
      m[i, j] = cell[s].get(e, np.nan)
  return m


def _per_example(cell: dict) -> dict[int, float]:
  """Mean over seeds of each example (NaN-aware)."""
  acc = defaultdict(list)
  for s in cell.values():
    for e, v in s.items():
      if math.isfinite(v):
        acc[e].append(v)
  return {e: float(np.mean(v)) for e, v in acc.items() if v}


def paired(cell_a: dict, cell_b: dict) -> tuple[np.ndarray, np.ndarray]:
  """Paired per-example values (seed-averaged) on the examples both have."""
  a, b = _per_example(cell_a), _per_example(cell_b)
  common = sorted(set(a) & set(b) - {-1}) or sorted(set(a) & set(b))
  return np.array([a[e] for e in common]), np.array([b[e] for e in common])


def summarize(rows: list[dict], config: C.StudyConfig) -> dict:
  """Means with bootstrap CIs, paired tests against the baseline, ranks and claims."""
  g, hib = _groups(rows)
  base = config.baseline_method
  out = []
  for k in sorted(g, key=lambda k: (k[3], k[2], k[1], k[4], k[0])):
    method, explainer, attack, metric, eps = k
    mat = _matrix(g[k])
    mean, lo, hi = S.bootstrap_ci(mat, seed=0)
    rec = {"method": method, "explainer": explainer, "attack": attack, "metric": metric,
           "epsilon": eps, "n": int(np.isfinite(mat).sum()), "mean": mean, "ci_low": lo,
           "ci_high": hi, "higher_is_better": hib[metric], "baseline": base,
           "median_diff_vs_baseline": float("nan"), "p_value": float("nan"),
           "p_holm": float("nan"), "vs_baseline": "–"}
    bk = (base, explainer, attack, metric, eps)
    if method != base and bk in g and metric != "train_time":
      a, b = paired(g[k], g[bk])
      d, p, n = S.paired_wilcoxon(a, b)
      rec["median_diff_vs_baseline"], rec["p_value"] = d, p
    out.append(rec)
  tested = [i for i, r in enumerate(out) if math.isfinite(r["p_value"])]
  adj = S.holm([out[i]["p_value"] for i in tested])
  for i, p in zip(tested, adj):
    r = out[i]
    r["p_holm"] = float(p)
    if p < ALPHA and r["median_diff_vs_baseline"] != 0:
      better = (r["median_diff_vs_baseline"] > 0) == r["higher_is_better"]
      r["vs_baseline"] = "better" if better else "worse"
    else:
      r["vs_baseline"] = "no difference"
  ranks, spread, w, columns = _ranks(out, config)
  return {"rows": out, "ranks": ranks, "rank_spread": spread, "kendall_w": w,
          "rank_columns": columns, "claims": claims(g, config)}


def _ranks(summary_rows, config):
  """Rank methods on the headline measures (see the README's study section)."""
  a = config.attacks
  eps = repr(float(max(a.epsilons)))
  e0 = a.explainers[0]
  cols: dict[str, dict[str, float]] = {}
  hib = {}
  for r in summary_rows:
    col = None
    if r["attack"] and r["explainer"] == e0 and r["epsilon"] == eps and r["metric"] in (
        "topk_intersection", "spearman"):
      col = f"{r['attack']}:{r['metric']}"
    elif not r["attack"] and r["explainer"] == e0 and r["metric"] in (
        "max_sensitivity", "local_lipschitz", "insertion", "deletion", "infidelity"):
      col = r["metric"]
    if col is not None:
      cols.setdefault(col, {})[r["method"]] = r["mean"]
      hib[col] = r["higher_is_better"]
  ranks, spread, w = S.rank_table(cols, hib)
  return ranks, spread, w, list(cols)


# ------------------------------------------------------------------------ claims
def _find(config, pred):
  return [m.label for m in config.methods if pred(m)]


def _claim(claim, source, measure, a_label, b_label, cell_a, cell_b, higher_is_better,
           expect="a_better"):
  """One claim: "a is better than b" on paired examples."""
  if cell_a is None or cell_b is None:
    return {"claim": claim, "source": source, "measure": measure, "status": "not run",
            "detail": "the study config lacks what this claim needs", "a": a_label,
            "b": b_label}
  a, b = paired(cell_a, cell_b)
  d, p, n = S.paired_wilcoxon(a, b)
  ma, la, ha = S.bootstrap_ci(a)
  mb, lb, hb = S.bootstrap_ci(b)
  md, ld, hd = S.bootstrap_ci(a - b)
  return {"claim": claim, "source": source, "measure": measure, "a": a_label, "b": b_label,
          "mean_a": ma, "ci_a": [la, ha], "mean_b": mb, "ci_b": [lb, hb], "mean_diff": md,
          "ci_diff": [ld, hd], "median_diff": d, "p_value": p, "n": n,
          "higher_is_better": higher_is_better, "expect": expect}


def claims(g, config: C.StudyConfig) -> list[dict]:
  """The papers' claims, each tested on the scores (Holm-corrected across claims)."""
  a = config.attacks
  base = config.baseline_method
  eps = repr(float(max(a.epsilons)))
  e0 = a.explainers[0]
  main_attack = "topk" if "topk" in a.names else a.names[-1]

  def cell(method, explainer, attack, metric, epsilon=eps):
    if method is None:
      return None
    return g.get((method, explainer, attack, metric, epsilon if attack else ""))

  def first(labels):
    return labels[0] if labels else None

  out = []
  m_measure = f"top-k intersection after the {main_attack} attack, eps={float(eps):.3g}, {e0} maps"
  out.append(_claim("Targeted (top-k) attacks move maps more than random signs",
                    "Ghorbani et al. 2019", f"top-k intersection, {e0} maps on {base}, eps="
                    f"{float(eps):.3g}", "random_sign", "topk",
                    cell(base, e0, "random_sign", "topk_intersection"),
                    cell(base, e0, "topk", "topk_intersection"), True))
  enames = [e.name for e in config.explainers]
  if "integrated_gradients" in a.explainers and "gradient" in a.explainers:
    out.append(_claim("Integrated-gradients maps are more robust than gradient maps",
                      "Ghorbani et al. 2019",
                      f"top-k intersection after the {main_attack} attack on {base}",
                      "integrated_gradients", "gradient",
                      cell(base, "integrated_gradients", main_attack, "topk_intersection"),
                      cell(base, "gradient", main_attack, "topk_intersection"), True))
  else:  # IG is not attacked: compare the two under random perturbations instead
    has = "integrated_gradients" in enames and "gradient" in enames
    out.append(_claim("Integrated-gradients maps are more robust than gradient maps",
                      "Ghorbani et al. 2019",
                      f"max-sensitivity on {base} (random perturbations; IG is not attacked "
                      f"in this study; lower is better)", "integrated_gradients", "gradient",
                      cell(base, "integrated_gradients", "", "max_sensitivity") if has else None,
                      cell(base, "gradient", "", "max_sensitivity") if has else None, False))
  adv = first(_find(config, lambda m: m.objective == "pgd")) or first(
      _find(config, lambda m: m.objective in ("trades", "fgsm")))
  out.append(_claim("Adversarial training makes maps more robust than standard training",
                    "Moshe et al. 2024", m_measure, adv or "(adversarial)", base,
                    cell(adv, e0, main_attack, "topk_intersection"),
                    cell(base, e0, main_attack, "topk_intersection"), True))
  act = first(_find(config, lambda m: m.objective == "activation_sensitivity"))
  out.append(_claim("Activation-sensitivity regularization gives maps at least as robust as "
                    "adversarial training", "Moshe et al. 2024", m_measure,
                    act or "(activation_sensitivity)", adv or "(adversarial)",
                    cell(act, e0, main_attack, "topk_intersection"),
                    cell(adv, e0, main_attack, "topk_intersection"), True))
  ga = first(_find(config, lambda m: m.objective == "gradient_alignment"))
  hess = first(_find(config, lambda m: m.objective == "hessian_norm"))
  soft = first(_find(config, lambda m: m.objective == "ce" and not m.activation.startswith(
      "relu")))
  ga_attack = "random_sign" if "random_sign" in a.names else main_attack
  ga_metric = "cosine" if "cosine" in config.metrics.similarity else "spearman"
  for other, what in ((base, "cross-entropy"), (hess, "the Hessian-norm penalty"),
                      (soft, "the softplus-only control")):
    out.append(_claim(f"Gradient alignment keeps gradients more aligned than {what}",
                      "Joo et al. 2023",
                      f"{ga_metric} of {e0} maps under the {ga_attack} perturbation, "
                      f"eps={float(eps):.3g}", ga or "(gradient_alignment)",
                      other or "(missing)", cell(ga, e0, ga_attack, ga_metric),
                      cell(other, e0, ga_attack, ga_metric), True))
  senn = sorted(_find(config, lambda m: m.objective == "senn"),
                key=lambda l: float(config.method(l).param("lam", 1e-2)))
  lo, hi = (senn[0], senn[-1]) if len(senn) >= 2 else (None, None)
  out.append(_claim("SENN explanations get more stable as the robustness weight grows",
                    "Alvarez-Melis & Jaakkola 2018",
                    "local Lipschitz estimate of the SENN relevances theta(x) (senn_stability, "
                    "lower is better), largest vs smallest lambda", hi or "(senn, large lambda)",
                    lo or "(senn, small lambda)", cell(hi, "", "", "senn_stability"),
                    cell(lo, "", "", "senn_stability"), False))
  dance = config.explainer("decoy") if "decoy" in enames else None
  dbase = dict(dance.params).get("base", "gradient") if dance else "gradient"
  has = dance is not None and dbase in enames
  out.append(_claim(f"DANCE decoy maps are less sensitive than {dbase} maps", "Lu et al. 2021",
                    f"max-sensitivity on {base} (lower is better)", "decoy", dbase,
                    cell(base, "decoy", "", "max_sensitivity") if has else None,
                    cell(base, dbase, "", "max_sensitivity") if has else None, False))
  out.append(_claim(f"DANCE decoy maps are more faithful than {dbase} maps", "Lu et al. 2021",
                    f"deletion AUC (normalised) on {base} (lower is better)", "decoy", dbase,
                    cell(base, "decoy", "", "deletion") if has else None,
                    cell(base, dbase, "", "deletion") if has else None, False))
  tested = [c for c in out if "p_value" in c]
  adj = S.holm([c["p_value"] for c in tested])
  for c, p in zip(tested, adj):
    c["p_holm"] = float(p)
    better = (c["median_diff"] > 0) == c["higher_is_better"]
    if c["n"] < 5:
      c["status"] = "inconclusive"
      c["detail"] = f"only {c['n']} paired examples"
    elif p < ALPHA and c["median_diff"] != 0:
      c["status"] = "reproduced" if better else "not reproduced"
      c["detail"] = ("significant in the claimed direction" if better else
                     "significant in the opposite direction")
    else:
      c["status"] = "inconclusive"
      c["detail"] = "no significant difference"
  return out


def write_summary(out: str, summary: dict) -> None:
  def w(tmp):
    with open(tmp, "w", newline="") as f:
      wr = csv.writer(f)
      wr.writerow(SUMMARY_COLUMNS)
      for r in summary["rows"]:
        wr.writerow([_fmt(r[c]) for c in SUMMARY_COLUMNS])
  R._atomic_write(os.path.join(out, "summary.csv"), w)
  R.write_json(os.path.join(out, "summary.json"), _jsonable(summary))


def _fmt(v):
  if isinstance(v, bool):
    return "higher" if v else "lower"
  if isinstance(v, float):
    return "" if math.isnan(v) else repr(v)
  return v


def _jsonable(o):
  if isinstance(o, float):
    return None if not math.isfinite(o) else o
  if isinstance(o, dict):
    return {str(k): _jsonable(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [_jsonable(v) for v in o]
  return o


def summarize_file(scores_path: str, config: C.StudyConfig) -> dict:
  """Recomputes the summary from ``scores.csv`` alone."""
  return summarize(read_scores(scores_path), config)
