"""Statistics of a study: bootstrap intervals, paired Wilcoxon tests, Holm, ranks.

All functions are plain numpy/scipy on host arrays (they run once, on the
gathered scores).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st


def bootstrap_ci(values: np.ndarray, *, num_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
  """Mean and percentile-bootstrap CI over examples and seeds.

  Args:
    values: ``[S, N]`` (seeds x examples) or ``[N]``; NaNs are dropped per seed.
      Seeds and examples are resampled with replacement (a two-level
      bootstrap: seeds, then examples within each drawn seed), so the interval
      covers both sources of variation; with one seed it is the ordinary
      bootstrap over examples.
    num_resamples: bootstrap resamples.
    level: coverage of the interval.
    seed: resampling seed (the interval is reproducible).

  Returns:
    ``(mean, lo, hi)``; NaNs if no finite value.
  """
  v = np.atleast_2d(np.asarray(values, np.float64))
  rows = [r[np.isfinite(r)] for r in v]
  rows = [r for r in rows if r.size]
  if not rows:
    return float("nan"), float("nan"), float("nan")
  mean = float(np.mean(np.concatenate(rows)))
  rng = np.random.default_rng(seed)
  s = len(rows)
  pick_seeds = rng.integers(0, s, size=(num_resamples, s))
  sizes = {r.size for r in rows}
  if len(sizes) == 1:  # the usual case: every seed scored the same examples
    n = sizes.pop()
    table = np.stack(rows)
    idx = rng.integers(0, n, size=(num_resamples, s, n))
    means = table[pick_seeds[:, :, None], idx].mean(axis=(1, 2))
  else:
    means = np.empty(num_resamples)
    for b in range(num_resamples):
      parts = [rows[i][rng.integers(0, rows[i].size, rows[i].size)] for i in pick_seeds[b]]
      means[b] = np.mean(np.concatenate(parts))
  alpha = (1 - level) / 2
  lo, hi = np.quantile(means, [alpha, 1 - alpha])
  return mean, float(min(lo, mean)), float(max(hi, mean))


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
  """Two-sided Wilcoxon signed-rank test of paired samples ``a`` vs ``b``.

  Pairs with a NaN are dropped; zero differences follow scipy's default
  (``zero_method="wilcox"``: discarded). Returns ``(median difference a - b,
  p-value, number of pairs)``; the p-value is 1 when fewer than one non-zero
  difference remains.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  ok = np.isfinite(a) & np.isfinite(b)
  d = a[ok] - b[ok]
  n = int(d.size)
  if n == 0:
    return float("nan"), 1.0, 0
  if not np.any(d != 0):
    return 0.0, 1.0, n
  res = _st.wilcoxon(a[ok], b[ok])
  return float(np.median(d)), float(res.pvalue), n


def holm(pvalues) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
  p = np.asarray(pvalues, np.float64)
  m = p.size
  if m == 0:
    return p
  order = np.argsort(p, kind="stable")
  adj = np.empty(m)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, (m - rank) * p[i])
    adj[i] = min(1.0, running)
  return adj


def rank_table(means: dict[str, dict[str, float]], higher_is_better: dict[str, bool]
               ) -> tuple[dict[str, dict[str, float]], dict[str, float], float]:
  """Ranks methods per metric (1 = best, ties averaged) and measures disagreement.

  Args:
    means: ``metric -> method -> mean``.
    higher_is_better: ``metric -> direction``.

  Returns:
    ``(ranks, spread, kendall_w)``: ``ranks[metric][method]``; ``spread[method]``,
    the standard deviation of a method's ranks across metrics (how much the
    metrics disagree about it); and Kendall's W, the agreement of all metrics
    (1 = identical rankings, 0 = none).
  """
  metric_names = [m for m in means if means[m]]
  methods = sorted({k for m in metric_names for k in means[m]})
  ranks: dict[str, dict[str, float]] = {}
  for metric in metric_names:
    vals = np.array([means[metric].get(k, np.nan) for k in methods], np.float64)
    sign = -1.0 if higher_is_better.get(metric, True) else 1.0
    keyed = np.where(np.isfinite(vals), sign * vals, np.inf)
    r = _st.rankdata(keyed, method="average")
    ranks[metric] = {k: float(r[i]) for i, k in enumerate(methods)}
  spread = {k: float(np.std([ranks[m][k] for m in ranks])) if ranks else float("nan")
            for k in methods}
  mcount, n = len(ranks), len(methods)
  if mcount < 2 or n < 2:
    return ranks, spread, float("nan")
  r = np.array([[ranks[m][k] for k in methods] for m in ranks])
  totals = r.sum(axis=0)
  s = float(np.sum((totals - totals.mean()) ** 2))
  w = 12 * s / (mcount ** 2 * (n ** 3 - n))
  return ranks, spread, float(w)
