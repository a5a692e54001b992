"""Shared pieces of CLI commands: data + model setup with progress, tables, JSON."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np


def console():
  from rich.console import Console
  return Console()


def add_data_args(p) -> None:
  p.add_argument("--dataset", default="mnist_embedded",
                 help="dataset name (default: the embedded MNIST subset, works offline)")
  p.add_argument("--data-dir", default=None,
                 help="directory with local .npz copies (or set $RATTR_DATA_DIR)")
  p.add_argument("--seed", type=int, default=0)


def train_model(model_name: str, data, *, epochs: int, seed: int, batch_size: int = 64,
                learning_rate: float = 1e-3, activation: str = "relu"):
  """Trains a zoo model with a rich progress bar; returns ``(model, seconds)``."""
  from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

  from rattr_jax import models
  from rattr_jax._quicktrain import fit

  model = models.create_model(model_name, input_shape=data.input_shape,
                              num_classes=data.num_classes, activation=activation, seed=seed)
  t0 = time.perf_counter()
  with Progress(TextColumn("[bold]training {task.fields[model]}"), BarColumn(),
                TextColumn("epoch {task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                console=console(), transient=False) as prog:
    task = prog.add_task("train", total=epochs, model=model_name, loss="-")
    def progress(epoch, loss):
      prog.update(task, advance=1, loss=f"{loss:.4f}")
    model = fit(model, data.x_train, data.y_train, epochs=epochs, batch_size=batch_size,
                learning_rate=learning_rate, seed=seed, progress=progress)
  return model, time.perf_counter() - t0


def write_json(path: str, payload: dict[str, Any]) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def conv(o):
    if isinstance(o, (np.floating, np.integer)):
      return o.item()
    if isinstance(o, np.ndarray):
      return o.tolist()
    raise TypeError(type(o))

  with open(path, "w") as f:
    json.dump(payload, f, indent=2, default=conv)
  return path


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
  from rich.table import Table
  t = Table(title=title)
  for c in columns:
    first = c == columns[0]
    t.add_column(c, justify="left" if first else "right", no_wrap=first)
  for r in rows:
    t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
  console().print(t)
