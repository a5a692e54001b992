"""Matplotlib figures: image | map grids and metric plots, written as PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def show_image(ax, img) -> None:
  """Draws an image in [0, 1] on a matplotlib axis: grey for one channel, colour for RGB."""
  img = np.asarray(img)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim == 2:
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
  else:
    ax.imshow(np.clip(img, 0.0, 1.0))


def add_colorbar(fig, ax, im):
  """Adds a small colorbar for the image ``im`` drawn on ``ax``; returns it."""
  cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
  cb.ax.tick_params(labelsize=5)
  cb.formatter.set_powerlimits((-2, 3))
  cb.update_ticks()
  cb.ax.yaxis.get_offset_text().set_fontsize(5)
  return cb


def saliency_grid(columns: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                  image_columns: Sequence[str] = (), row_labels: Sequence[str] | None = None,
                  title: str | None = None, cmap: str = "inferno",
                  colorbar: bool = False) -> str:
  """Writes a grid with one row per example and one column per entry of ``columns``.

  Args:
    columns: ordered mapping from a column title to ``[N, H, W]`` maps or
      ``[N, H, W, C]`` images.
    path: output PNG path (parent directories are created).
    image_columns: titles of the columns that are images (shown in gray/RGB
      in [0, 1]); others are maps, each panel scaled to its own max.
    row_labels: optional label per row.
    title: optional figure title.
    cmap: colormap of the maps.
    colorbar: draw a colorbar beside each map panel (its own scale).

  Returns:
    The path written.
  """
  plt = _plt()
  names = list(columns)
  n = len(next(iter(columns.values())))
  fig, axes = plt.subplots(n, len(names), figsize=(1.9 * len(names), 1.9 * n + 0.4),
                           squeeze=False)
  for j, name in enumerate(names):
    data = np.asarray(columns[name])
    for i in range(n):
      ax = axes[i, j]
      if name in image_columns:
        show_image(ax, data[i])
      else:
        m = data[i]
        if m.ndim == 3:
          m = np.abs(m).sum(-1)
        im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=float(np.max(m)) or 1.0)
        if colorbar:
          add_colorbar(fig, ax, im)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(name, fontsize=9)
      if j == 0 and row_labels is not None:
        ax.set_ylabel(row_labels[i], fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return str(path)


def line_plot(series: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
              xlabel: str = "", ylabel: str = "", title: str | None = None,
              x: Sequence[float] | None = None, logx: bool = False) -> str:
  """Writes a line plot of named series (e.g. training curves, metric sweeps)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for name, ys in series.items():
    xs = np.arange(len(ys)) if x is None else np.asarray(x)
    ax.plot(xs, np.asarray(ys), marker="o", ms=3, label=name)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return str(path)


def feature_bars(columns: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                 feature_names: Sequence[str] | None = None,
                 row_labels: Sequence[str] | None = None, title: str | None = None,
                 max_features: int = 15) -> str:
  """Writes horizontal bar charts of tabular attributions, one row per example.

  Args:
    columns: ordered mapping from a method name to ``[N, F]`` attributions.
    path: output PNG path (parent directories are created).
    feature_names: the ``F`` feature names (default ``x0, x1, ...``).
    row_labels: optional label per example.
    title: optional figure title.
    max_features: features shown per panel (largest ``|attribution|`` first).

  Returns:
    The path written.
  """
  plt = _plt()
  names = list(columns)
  first = np.asarray(columns[names[0]])
  n, f = first.shape[0], first.reshape(first.shape[0], -1).shape[1]
  feats = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(f)]
  if len(feats) != f:
    raise ValueError(f"`feature_names` has {len(feats)} names for {f} features.")
  shown = min(max_features, f)
  fig, axes = plt.subplots(n, len(names), figsize=(3.6 * len(names), 0.22 * shown * n + 0.8),
                           squeeze=False)
  for j, name in enumerate(names):
    a = np.asarray(columns[name]).reshape(n, -1)
    for i in range(n):
      ax = axes[i, j]
      order = np.argsort(-np.abs(a[i]))[:shown][::-1]
      vals = a[i][order]
      ax.barh(range(shown), vals, color=np.where(vals >= 0, "#c0392b", "#2e6fb7"))
      ax.set_yticks(range(shown))
      ax.set_yticklabels([feats[k] for k in order], fontsize=6)
      ax.tick_params(axis="x", labelsize=6)
      ax.axvline(0.0, color="k", lw=0.5)
      if i == 0:
        ax.set_title(name, fontsize=9)
      if j == 0 and row_labels is not None:
        ax.set_ylabel(row_labels[i], fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return str(path)
