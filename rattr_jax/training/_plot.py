"""PNG of training curves (matplotlib, Agg backend)."""

from __future__ import annotations

import numpy as np


def plot_curves(path: str, history: list[dict], step_log: dict, *, title: str = "") -> str:
  """Draws loss (per step and per epoch, each term), accuracy and learning rate.

  Args:
    path: output PNG path.
    history: per-epoch log entries from `rattr_jax.training.train`.
    step_log: ``{"step": [...], "loss": [...], "acc": [...]}`` per training step.
    title: figure title.

  Returns:
    ``path``.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  ax = axes[0]
  steps = np.asarray(step_log.get("step", []))
  if len(steps):
    loss = np.asarray(step_log["loss"])
    ax.plot(steps, loss, color="0.75", lw=0.8, label="loss (per step)")
    w = max(1, len(loss) // 50)
    if w > 1:
      sm = np.convolve(loss, np.ones(w) / w, mode="valid")
      ax.plot(steps[w - 1:], sm, color="k", lw=1.5, label=f"loss ({w}-step mean)")
  ep_steps = [h["step"] for h in history]
  per_step_terms = step_log.get("terms", {})
  for i, (name, vals) in enumerate(per_step_terms.items()):
    vals = np.asarray(vals)
    if len(per_step_terms) < 2 or len(vals) != len(steps) or not np.any(vals > 0):
      continue
    w = max(1, len(vals) // 50)
    sm = np.convolve(vals, np.ones(w) / w, mode="valid") if w > 1 else vals
    ax.plot(steps[w - 1:], sm, lw=1.2, color=f"C{i + 1}", label=f"{name} (per step)")
  ax.plot(ep_steps, [h.get("train_loss", np.nan) for h in history], "o", color="k",
          label="loss (epoch mean)")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_title("training loss and its terms (unweighted)")
  ax.legend(fontsize=7)

  ax = axes[1]
  if len(steps):
    acc = np.asarray(step_log["acc"])
    w = max(1, len(acc) // 50)
    sm = np.convolve(acc, np.ones(w) / w, mode="valid") if w > 1 else acc
    ax.plot(steps[w - 1:], sm, color="0.6", lw=1, label="train batch acc")
  for k, style in (("train_acc", "-o"), ("val_accuracy", "-s"), ("test_accuracy", "-^"),
                   ("train_adv_acc", "--o")):
    if history and k in history[0]:
      ax.plot(ep_steps, [h[k] for h in history], style, label=k)
  ax.set_xlabel("step")
  ax.set_ylim(0, 1.0)
  ax.set_title("accuracy")
  ax.legend(fontsize=7)

  ax = axes[2]
  if len(steps) and len(step_log.get("lr", [])) == len(steps):
    ax.plot(steps, step_log["lr"], "-")
  else:
    ax.plot(ep_steps, [h.get("learning_rate", np.nan) for h in history], "-o")
  ax.set_xlabel("step")
  ax.set_title("learning rate")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
