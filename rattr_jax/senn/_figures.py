"""SENN figures (PNG): explicitness grid, one explained prediction, training diagnostics."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  _plt().close(fig)
  return str(path)


def _img(ax, im):
  im = np.asarray(im)
  if im.ndim == 3 and im.shape[-1] == 1:
    im = im[..., 0]
  ax.imshow(np.clip(im, 0, 1), cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
  ax.set_xticks([])
  ax.set_yticks([])


def explicitness_grid(images: np.ndarray, h: np.ndarray, path: str, *, top: int = 8,
                      labels: np.ndarray | None = None, title: str | None = None) -> str:
  """One row per concept: the ``top`` test images with the largest ``h_i`` (and the smallest).

  The paper's explicitness figure shows each concept by its top-activating
  examples. Because a concept's sign is arbitrary, the right half of each row
  shows the most negative activations.

  Args:
    images: ``[N, H, W, C]`` test images in [0, 1].
    h: ``[N, k]`` their concepts.
    path: output PNG.
    top: images per side.
    labels: optional ``[N]`` labels shown above each image.
  """
  plt = _plt()
  k = h.shape[1]
  fig, axes = plt.subplots(k, 2 * top, figsize=(0.9 * 2 * top + 1.2, 1.05 * k + 0.6),
                           squeeze=False)
  for i in range(k):
    order = np.argsort(h[:, i])
    picks = list(order[::-1][:top]) + list(order[:top])
    for j, n in enumerate(picks):
      ax = axes[i, j]
      _img(ax, images[n])
      tag = f"{h[n, i]:+.2f}" if labels is None else f"y={labels[n]} {h[n, i]:+.1f}"
      ax.set_title(tag, fontsize=6)
    axes[i, 0].set_ylabel(f"concept {i}\nvar {h[:, i].var():.2g}", fontsize=7)
  fig.text(0.27, 0.995, "largest h_i", ha="center", va="top", fontsize=8)
  fig.text(0.75, 0.995, "smallest h_i", ha="center", va="top", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9, y=0.965)
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  return _save(fig, path)


def theta_h_bars(x: np.ndarray, theta: np.ndarray, h: np.ndarray, path: str, *,
                 names: Sequence[str] | None = None, title: str | None = None,
                 max_bars: int = 15) -> str:
  """Explains one prediction: ``theta_i``, ``h_i`` and ``theta_i h_i`` per concept.

  Args:
    x: the input (an image ``[H, W, C]`` is shown; a vector is not).
    theta: ``[k]`` relevances of the predicted class.
    h: ``[k]`` concepts.
    path: output PNG.
    names: concept names (default ``c0, c1, ...``).
    max_bars: show only the concepts with the largest ``|theta_i h_i|``.
  """
  plt = _plt()
  k = len(theta)
  names = [f"c{i}" for i in range(k)] if names is None else list(names)
  contrib = theta * h
  idx = np.argsort(-np.abs(contrib))[:max_bars][::-1]
  is_image = np.asarray(x).ndim == 3
  ncols = 4 if is_image else 3
  fig, axes = plt.subplots(1, ncols, figsize=(3.0 * ncols, 0.28 * len(idx) + 1.8))
  if is_image:
    _img(axes[0], x)
    axes[0].set_title("input", fontsize=9)
    axes = axes[1:]
  ys = np.arange(len(idx))
  for ax, vals, lab in zip(axes, (theta, h, contrib),
                           ("relevance theta_i", "concept h_i", "theta_i * h_i")):
    v = vals[idx]
    ax.barh(ys, v, color=np.where(v >= 0, "tab:blue", "tab:red"))
    ax.set_yticks(ys)
    ax.set_yticklabels([names[i] for i in idx], fontsize=7)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_title(lab, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def training_diagnostics(histories: Mapping[str, Mapping[str, list]], path: str, *,
                         title: str | None = None) -> str:
  """Per epoch and per run: prediction loss, robustness loss, validation accuracy,
  reconstruction error and the smallest concept variance (collapse shows as ~0)."""
  plt = _plt()
  panels = [("prediction", "train cross-entropy", True),
            ("robustness", "robustness loss L_theta", True),
            ("val_accuracy", "test accuracy", False),
            ("val_reconstruction", "test reconstruction MSE", True),
            ("concept_variance", "concept variance (min / max over concepts)", True)]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2))
  for ax, (key, lab, logy) in zip(axes, panels):
    if key == "val_reconstruction" and not any(np.any(np.asarray(h.get(key, []), float) > 0)
                                               for h in histories.values()):
      ax.text(0.5, 0.5, "identity concepts:\nno reconstruction", ha="center", va="center",
              transform=ax.transAxes, fontsize=9)
      ax.set_title(lab, fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
      continue
    for name, hist in histories.items():
      vals = hist.get(key, [])
      if not len(vals):
        continue
      ep = np.arange(1, len(vals) + 1)
      if key == "concept_variance":
        v = np.asarray(vals, float)
        line, = ax.plot(ep, v.min(1), marker="o", ms=3, label=name)
        ax.plot(ep, v.max(1), ls="--", color=line.get_color(), lw=0.8)
      else:
        ax.plot(ep, np.maximum(np.asarray(vals, float), 1e-12) if logy else vals, marker="o",
                ms=3, label=name)
    if logy:
      ax.set_yscale("log")
    ax.set_title(lab, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def _med(v):
  """``(median, q25, q75)`` of a summary dict (`_report._summary`), or ``(v, None, None)``."""
  if isinstance(v, Mapping):
    return v["median"], v.get("q25"), v.get("q75")
  return v, None, None


def tradeoff_plot(lambdas: Sequence[float], series: Mapping[str, Sequence[Any]], path: str, *,
                  baselines: Mapping[str, Any] | None = None, title: str | None = None) -> str:
  """Accuracy, stability and faithfulness against ``lambda`` (log x), one panel each.

  A value of ``series`` (and of ``baselines``) is a number, or a summary dict
  with ``median``, ``q25`` and ``q75``: then the median is drawn with its
  interquartile range as a band (stability is heavy-tailed, so its mean says
  little). Post-hoc stability baselines are horizontal lines (with their IQR
  band) on the stability panels.
  """
  plt = _plt()
  names = list(series)
  fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
  for ax, name in zip(axes[0], names):
    vals = [_med(v) for v in series[name]]
    med = np.asarray([v[0] for v in vals], float)
    ax.plot(lambdas, med, marker="o", label="SENN" + (" (median, IQR)" if vals and vals[0][1]
                                                       is not None else ""))
    if vals and vals[0][1] is not None:
      ax.fill_between(lambdas, [v[1] for v in vals], [v[2] for v in vals], alpha=0.25)
    if baselines and "stability" in name:
      for j, (b, v) in enumerate(baselines.items()):
        m, lo, hi = _med(v)
        ax.axhline(m, ls="--", lw=1, color=f"C{j + 1}", label=b)
        if lo is not None:
          ax.axhspan(lo, hi, color=f"C{j + 1}", alpha=0.1)
      ax.set_yscale("log")
      ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("lambda", fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
