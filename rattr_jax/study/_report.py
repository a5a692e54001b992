"""Figures (PNG) and ``REPORT.md`` of a study."""

from __future__ import annotations

import math
import os

import numpy as np

from rattr_jax.study import _aggregate as G
from rattr_jax.study import _config as C
from rattr_jax.study import _run as R

CMAP = "inferno"  # the colormap of `rattr explain`


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _show_image(ax, img):
  img = np.asarray(img)
  if img.shape[-1] == 1:
    ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    ax.imshow(np.clip(img, 0, 1))


def _f(v, digits=3):
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "–"
  if isinstance(v, float):
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
      return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"
  return str(v)


def _ci(mean, lo, hi):
  return f"{_f(mean)} [{_f(lo)}, {_f(hi)}]"


# ----------------------------------------------------------------------- figures
def saliency_grid(path, config, runs, x_eval, y_eval, *, num_images: int = 4):
  """Rows: models (first seed); per image: clean map | attacked map (same images)."""
  plt = _plt()
  a = config.attacks
  e0, att = a.explainers[0], ("topk" if "topk" in a.names else a.names[-1])
  eps = max(a.epsilons)
  seed0 = config.seeds[0]
  rows = [r for r in runs if r.status == "completed" and r.seed == seed0]
  n = min(num_images, len(x_eval))
  fig, axes = plt.subplots(len(rows) + 1, 2 * n, figsize=(2.0 * 2 * n, 2.1 * (len(rows) + 1)),
                           squeeze=False)
  for j in range(n):
    _show_image(axes[0, 2 * j], x_eval[j])
    axes[0, 2 * j].set_title(f"image {j} (label {int(y_eval[j])})", fontsize=9)
    axes[0, 2 * j + 1].axis("off")
  maps_dir = os.path.join(os.path.dirname(os.path.dirname(path)), "maps")
  for i, r in enumerate(rows, start=1):
    clean = np.load(os.path.join(maps_dir, r.name, f"{e0}.npz"))["map"]
    adv = _attack_map(config, r, e0, att, eps)
    for j in range(n):
      vmax = float(max(clean[j].max(), adv[j].max() if adv is not None else 0)) or 1.0
      ax = axes[i, 2 * j]
      ax.imshow(clean[j], cmap=CMAP, vmin=0, vmax=vmax)
      ax.set_title("clean", fontsize=8)
      ax2 = axes[i, 2 * j + 1]
      if adv is not None:
        im = ax2.imshow(adv[j], cmap=CMAP, vmin=0, vmax=vmax)
        ax2.set_title(f"{att} ε={eps:.3g}", fontsize=8)
      if j == 0:
        ax.set_ylabel(r.label, fontsize=10, rotation=90)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"{e0} maps of each model on the same images: clean and after the {att} "
               f"attack (ε={eps:.3g})", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


_ATTACK_MAPS: dict = {}


def _attack_map(config, run, explainer, attack, eps):
  return _ATTACK_MAPS.get((run.name, explainer, attack, repr(float(eps))))


#: Colours for methods 11-20: distinct hues away from tab10's (tab20's light/dark pairs of one
#: hue were hard to tell apart in print).
_EXTRA_COLORS = ("#000000", "#000080", "#008080", "#e600e6", "#32cd32", "#b8860b", "#800000",
                 "#4b0082", "#fa8072", "#708090")


def _method_colors(labels):
  """One distinct colour per method: tab10 for the first 10, then ten other distinct hues
  (cycling beyond 20)."""
  plt = _plt()
  tab = plt.get_cmap("tab10")
  palette = [tab(i) for i in range(10)] + list(_EXTRA_COLORS)
  return {l: palette[i % len(palette)] for i, l in enumerate(labels)}


def epsilon_curves(path, config, summary):
  """Similarity vs eps per attack, one line per method with a 95% CI band."""
  plt = _plt()
  a = config.attacks
  e0 = a.explainers[0]
  metrics = [m for m in ("topk_intersection", "spearman") if m in config.metrics.similarity]
  metrics = metrics or [config.metrics.similarity[0]]
  labels = [m.label for m in config.methods]
  colors = _method_colors(labels)
  fig, axes = plt.subplots(len(metrics), len(a.names), figsize=(3.4 * len(a.names),
                                                                2.9 * len(metrics)),
                           squeeze=False)
  for i, metric in enumerate(metrics):
    for j, att in enumerate(a.names):
      ax = axes[i, j]
      for lab in labels:
        pts = sorted((float(r["epsilon"]), r["mean"], r["ci_low"], r["ci_high"])
                     for r in summary["rows"] if r["method"] == lab and r["attack"] == att
                     and r["metric"] == metric and r["explainer"] == e0)
        if not pts:
          continue
        e, m, lo, hi = map(np.array, zip(*pts))
        ax.plot(e, m, "o-", color=colors[lab], label=lab, lw=1.5, ms=3)
        ax.fill_between(e, lo, hi, color=colors[lab], alpha=0.15, lw=0)
      ax.set_title(f"{att} attack", fontsize=10)
      ax.set_xlabel("ε (input units)")
      ax.set_ylabel(metric.replace("_", " "))
      ax.grid(alpha=0.3)
  axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
  fig.suptitle(f"Similarity of {e0} maps before and after each attack (mean, 95% CI); "
               f"higher = more robust", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def robustness_vs_accuracy(path, config, rows):
  """One point per model: explanation robustness against clean and robust accuracy."""
  plt = _plt()
  a = config.attacks
  e0 = a.explainers[0]
  att = "topk" if "topk" in a.names else a.names[-1]
  eps = repr(float(max(a.epsilons)))
  per = {}
  for r in rows:
    k = (r["method"], r["seed"])
    d = per.setdefault(k, {"acc": [], "rob": [], "sim": []})
    if r["metric"] == "accuracy":
      d["acc"].append(r["value"])
    elif r["metric"] == "robust_accuracy" and math.isfinite(r["value"]):
      d["rob"].append(r["value"])
    elif (r["metric"] == "topk_intersection" and r["attack"] == att and r["explainer"] == e0
          and r["epsilon"] == eps):
      d["sim"].append(r["value"])
  labels = [m.label for m in config.methods]
  colors = _method_colors(labels)
  fig, axes = plt.subplots(1, 2, figsize=(11.5, 4))
  # Methods in config order, each drawn smaller than the one before: models that land on
  # the same point (e.g. a weak penalty and its control) show as nested rings, not one dot.
  order = {lab: i for i, lab in enumerate(labels)}
  size = {lab: 90.0 - 50.0 * i / max(1, len(labels) - 1) for lab, i in order.items()}
  for (lab, seed), d in sorted(per.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1])):
    if not d["sim"]:
      continue
    y = np.mean(d["sim"])
    for ax, key in zip(axes, ("acc", "rob")):
      if d[key]:
        ax.scatter(np.mean(d[key]), y, color=colors.get(lab, "k"), s=size.get(lab, 40.0),
                   label=lab if seed == config.seeds[0] else None, edgecolor="k", lw=0.5)
  axes[0].set_xlabel("clean test accuracy")
  from matplotlib.ticker import MaxNLocator
  for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(5))
  axes[1].set_xlabel(f"PGD robust accuracy (ε={config.diagnostics.pgd_epsilon:.3g}, "
                     f"{config.diagnostics.pgd_steps} steps, {config.diagnostics.pgd_restarts}"
                     f" restart(s))")
  for ax in axes:
    ax.set_ylabel(f"top-k ∩ after {att} (ε={float(eps):.3g})")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.1)  # no point on an axis edge
  axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
  fig.suptitle("Explanation robustness against accuracy (one point per model and seed)",
               fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def metric_bars(path, config, summary):
  """One panel per score metric: bars per method with 95% CIs."""
  plt = _plt()
  e0 = config.attacks.explainers[0]
  names = []
  for r in summary["rows"]:
    if r["attack"] == "" and r["explainer"] in (e0, "") and r["metric"] not in names:
      names.append(r["metric"])
  labels = [m.label for m in config.methods]
  colors = _method_colors(labels)
  ncol = 4
  nrow = max(1, math.ceil(len(names) / ncol))
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
  for ax, metric in zip(axes.ravel(), names):
    recs = {r["method"]: r for r in summary["rows"] if r["metric"] == metric
            and r["attack"] == "" and r["explainer"] in (e0, "")}
    xs = [l for l in labels if l in recs]
    m = np.array([recs[l]["mean"] for l in xs])
    lo = np.array([recs[l]["ci_low"] for l in xs])
    hi = np.array([recs[l]["ci_high"] for l in xs])
    err = np.vstack([np.nan_to_num(m - lo), np.nan_to_num(hi - m)])
    ax.bar(range(len(xs)), np.nan_to_num(m), yerr=err, color=[colors[l] for l in xs],
           capsize=3)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, rotation=35, ha="right", fontsize=7)
    arrow = "↑" if next(iter(recs.values()))["higher_is_better"] else "↓"
    ax.set_title(f"{metric.replace('_', ' ')} {arrow}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  fig.suptitle(f"Metrics of {e0} maps and model diagnostics (mean, 95% CI; ↑ higher is better)",
               fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------ report
def headline(summary, config) -> tuple[list[str], list[list[str]]]:
  """The headline table: one row per method, the key measures with CIs."""
  a = config.attacks
  e0 = a.explainers[0]
  eps = repr(float(max(a.epsilons)))
  att = "topk" if "topk" in a.names else a.names[-1]
  cols = [("accuracy", "", "", ""), ("robust_accuracy", "", "", ""),
          ("topk_intersection", e0, att, eps), ("spearman", e0, att, eps),
          ("max_sensitivity", e0, "", ""), ("insertion", e0, "", ""),
          ("deletion", e0, "", ""), ("train_time", "", "", "")]
  idx = {(r["method"], r["metric"], r["explainer"], r["attack"], r["epsilon"]): r
         for r in summary["rows"]}
  header = ["method"]
  present = []
  for metric, ex, at, ep in cols:
    if any(k[1:] == (metric, ex, at, ep) for k in idx):
      arrow = "↑" if metric not in ("max_sensitivity", "deletion", "train_time") else "↓"
      name = metric if not at else f"{metric} ({at}, ε={float(ep):.3g})"
      header.append(f"{name} {arrow}")
      present.append((metric, ex, at, ep))
  rows = []
  for m in config.methods:
    row = [m.label]
    for metric, ex, at, ep in present:
      r = idx.get((m.label, metric, ex, at, ep))
      if r is None:
        row.append("–")
      elif metric == "train_time":
        row.append(f"{r['mean']:.1f} s")
      else:
        mark = {"better": " ▲", "worse": " ▼"}.get(r["vs_baseline"], "")
        row.append(_ci(r["mean"], r["ci_low"], r["ci_high"]) + mark)
    rows.append(row)
  return header, rows


def _md_table(header, rows) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(out)


def claims_table(summary) -> tuple[list[str], list[list[str]]]:
  header = ["claim", "source", "measure", "a vs b", "mean a [95% CI]", "mean b [95% CI]",
            "mean diff [95% CI]", "p (Holm)", "n", "status"]
  rows = []
  for c in summary["claims"]:
    if c["status"] == "not run":
      rows.append([c["claim"], c["source"], c["measure"], f"{c['a']} vs {c['b']}", "–", "–",
                   "–", "–", "–", "**not run** (" + c["detail"] + ")"])
      continue
    rows.append([c["claim"], c["source"], c["measure"], f"{c['a']} vs {c['b']}",
                 _ci(c["mean_a"], *c["ci_a"]), _ci(c["mean_b"], *c["ci_b"]),
                 _ci(c["mean_diff"], *c["ci_diff"]), _f(c["p_holm"]), str(c["n"]),
                 f"**{c['status']}** ({c['detail']})"])
  return header, rows


def write_report(out, config: C.StudyConfig, runs, rows, summary, *, x_eval, y_eval,
                 stage_seconds) -> None:
  figs = os.path.join(out, "figures")
  os.makedirs(figs, exist_ok=True)
  a = config.attacks
  # attacked maps of the grid's attack, from the unit files, by name
  _ATTACK_MAPS.clear()
  for name in os.listdir(os.path.join(out, "units", "attack")) if os.path.isdir(
      os.path.join(out, "units", "attack")) else []:
    if name.endswith(".npz"):
      meta, arrs = R.load_unit(os.path.join(out, "units", "attack", name))
      _ATTACK_MAPS[(meta["model"], meta["explainer"], meta["attack"],
                    repr(float(meta["epsilon"])))] = arrs["map_adv"]
  saliency_grid(os.path.join(figs, "saliency_grid.png"), config, runs, x_eval, y_eval)
  epsilon_curves(os.path.join(figs, "epsilon_curves.png"), config, summary)
  robustness_vs_accuracy(os.path.join(figs, "robustness_vs_accuracy.png"), config, rows)
  metric_bars(os.path.join(figs, "metric_bars.png"), config, summary)

  h, hr = headline(summary, config)
  ch, cr = claims_table(summary)
  lines = [f"# Study `{config.name}`", "", config.description, "",
           "## Setup", "",
           f"- **Data**: `{config.data.dataset}`, {config.data.num_eval} evaluation images "
           f"(the first of the test split in seeded order {config.data.split_seed}), training "
           f"on {config.data.max_train or 'all'} images.",
           f"- **Model**: `{config.model}`; {config.epochs} epoch(s), batch "
           f"{config.batch_size}, Adam lr {config.learning_rate:g}; seeds "
           f"{list(config.seeds)}.",
           f"- **Explainers**: " + ", ".join(
               f"`{e.name}`" + (f" ({', '.join(f'{k}={v}' for k, v in e.params)})"
                                if e.params else "") for e in config.explainers) + ".",
           f"- **Attacks** on " + ", ".join(f"`{e}`" for e in a.explainers) + " maps: "
           + ", ".join(f"`{n}`" for n in a.names) + f"; ε ∈ {list(a.epsilons)} (input units, "
           f"images in [0, 1]); {a.num_steps} steps; top-k k={a.k}; ReLU models are attacked "
           f"through a softplus-β={a.surrogate_beta:g} surrogate and scored on the real model, "
           f"smooth models exactly; the kept iterate is chosen by `{a.select_on}`.",
           f"- **Metrics**: similarity {', '.join(config.metrics.similarity)}; robustness "
           f"{', '.join(config.metrics.robustness)} (radius "
           f"{config.metrics.robustness_epsilon:g}); faithfulness "
           f"{', '.join(config.metrics.faithfulness)} (insertion/deletion normalised per "
           f"model by its own no-information and full-information outputs); sanity "
           f"{', '.join(config.metrics.sanity)}.",
           f"- **Diagnostics**: clean test accuracy (whole test split); PGD robust accuracy "
           f"(ε={config.diagnostics.pgd_epsilon:g}, {config.diagnostics.pgd_steps} steps, "
           f"{config.diagnostics.pgd_restarts} restart(s)) and input-Hessian geometry on the "
           f"first {config.diagnostics.num_examples} evaluation images.",
           "- Intervals are 95% bootstrap CIs over examples and seeds; ▲/▼ marks a "
           f"Holm-corrected paired Wilcoxon difference from `{config.baseline_method}` "
           "(p < 0.05) in the better/worse direction.", "",
           "### Methods", "", "| method | objective | activation | settings |",
           "|---|---|---|---|"]
  for m in config.methods:
    settings = ", ".join(f"{k}={v}" for k, v in m.params) or "–"
    lines.append(f"| {m.label} | `{m.objective}` | `{m.activation}` | {settings} |")
  lines += ["", "## Headline", "", _md_table(h, hr), "",
            "## Claims of the papers", "",
            "Each claim is tested on paired evaluation images (seed-averaged), two-sided "
            "Wilcoxon signed-rank, Holm-corrected across the claims. *Reproduced*: significant "
            "in the claimed direction; *not reproduced*: significant in the opposite "
            "direction; *inconclusive*: no significant difference at this sample size.", "",
            _md_table(ch, cr), ""]
  if summary["ranks"]:
    cols = summary["rank_columns"]
    header = ["method"] + cols + ["mean rank", "rank spread"]
    rrows = []
    for m in config.methods:
      rk = [summary["ranks"][c].get(m.label) for c in cols]
      vals = [v for v in rk if v is not None]
      rrows.append([m.label] + [_f(v) for v in rk]
                   + [_f(float(np.mean(vals))) if vals else "–",
                      _f(summary["rank_spread"].get(m.label))])
    lines += ["## Ranks across metrics", "",
              f"1 = best. *Rank spread* is the standard deviation of a method's ranks across "
              f"the metrics; Kendall's W = {_f(summary['kendall_w'])} measures how much the "
              f"metrics agree (1 = identical rankings).", "", _md_table(header, rrows), ""]
  lines += ["## Figures", "",
            "![saliency grid](figures/saliency_grid.png)", "",
            "![epsilon curves](figures/epsilon_curves.png)", "",
            "![robustness vs accuracy](figures/robustness_vs_accuracy.png)", "",
            "![metric bars](figures/metric_bars.png)", ""]
  failed = [r for r in runs if r.status != "completed"]
  if failed:
    lines += ["## Models that did not finish", ""]
    lines += [f"- `{r.name}`: {r.message}" for r in failed]
    lines.append("")
  lines += ["## Wall time", "", "Summed over every run of this folder (a resumed study adds "
            "up its runs; `timings.jsonl` has each run's stages with the load average).", "",
            "| stage | seconds |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in stage_seconds.items()]
  import jax
  from rattr_jax import models as Mo
  if jax.default_backend() == "cpu":
    env = os.environ.get("RATTR_JAX_ONEDNN", "").strip()
    why = (f"`compute.onednn = \"{config.onednn}\"`"
           + (f", `RATTR_JAX_ONEDNN={env}`, which wins" if env else ""))
    onednn = Mo.onednn_in_use()
    if onednn:
      why += ("; faster to run, but jaxlib 0.10.2 cannot store such programs in the "
              "persistent compilation cache, so it was off")
    elif Mo.persistent_cache_enabled():
      why += "; the persistent compilation cache was on, and it stores XLA's only"
    lines += ["", f"Convolutions on CPU: {'oneDNN' if onednn else 'XLA'}'s ({why})."]
  lines += ["", "## Notes", "",
            "- Activation-sensitivity regularization (Moshe et al. 2024) has no public formula; "
            "the method here is rattr_jax's documented reconstruction "
            "(`rattr_jax.regularizers.activation_sensitivity`).",
            "- ReLU networks have a zero input Hessian almost everywhere, so their Hessian "
            "diagnostics are 0 by construction.",
            "- All values per example are in `scores.csv`; `summary.csv` is computed from it "
            "alone.", ""]
  with open(os.path.join(out, "REPORT.md"), "w") as f:
    f.write("\n".join(lines))
