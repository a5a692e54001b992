"""Shared pieces of CLI commands: data arguments, progress with ETA, tables, JSON.

Nothing here imports JAX at module level; `train_model` imports it when called.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from rattr_jax.cli import _checks

MISSING = "–"  # shown for missing / undefined values in tables


def console(stderr: bool = False):
  """A rich console; when the stream is not a terminal, lines are never wrapped or cut."""
  from rich.console import Console
  stream = sys.stderr if stderr else sys.stdout
  if stream.isatty():
    return Console(file=stream)
  return Console(file=stream, width=10_000, soft_wrap=True, highlight=False)


def add_data_args(p, *, max_train: bool = True, lazy: bool = False) -> None:
  p.add_argument("--dataset", default="mnist_embedded",
                 type=_checks.choice(_checks.DATASETS),
                 help=f"dataset name, one of {', '.join(_checks.DATASETS)} "
                      "(default: the embedded MNIST subset, works offline)")
  p.add_argument("--data-dir", dest="data_dir", default=None,
                 help="existing directory with local .npz copies (or set $RATTR_DATA_DIR)")
  p.add_argument("--seed", type=_checks.seed, default=0,
                 help=f"seed of the split, initialisation and every random draw "
                      f"(0..{_checks.MAX_SEED})")
  if max_train:
    p.add_argument("--max-train", dest="max_train", type=_checks.positive_int, default=None,
                   help="use only the first N training examples")
  if lazy:
    p.add_argument("--lazy-data", dest="lazy_data", default=None,
                   action=argparse.BooleanOptionalAction,
                   help="memory-map the local .npz dataset and read only the rows used "
                        "(default: on when the job has several processes)")


def add_multihost_args(p) -> None:
  """``--coordinator``, ``--num-processes``, ``--process-id``: the flags of
  `rattr_jax.distributed.add_cli_args`, written here so that building the parser does not
  import JAX (tests/test_cli_args.py checks that they agree)."""
  g = p.add_argument_group("multi-host (default: environment, or one process)")
  g.add_argument("--coordinator", default=None,
                 help="host:port of process 0's coordinator (multi-process runs)")
  g.add_argument("--num-processes", dest="num_processes", type=_checks.positive_int,
                 default=None, help="number of processes of the job")
  g.add_argument("--process-id", dest="process_id", type=_checks.nonneg_int, default=None,
                 help="this process's id, 0 .. num-processes - 1")


def check_multihost_args(args) -> None:
  if (args.process_id is not None and args.num_processes is not None
      and args.process_id >= args.num_processes):
    raise _checks.CLIError(f"--process-id ({args.process_id}) must be < --num-processes "
                           f"({args.num_processes}).")


def check_data_args(args) -> None:
  if getattr(args, "data_dir", None) is not None:
    _checks.existing_dir(args.data_dir, "--data-dir")


def configure_cpu() -> None:
  """Applies the library's CPU settings before the first computation, if it offers them."""
  import rattr_jax
  fn = getattr(rattr_jax, "configure_cpu", None)
  if fn is not None:
    fn()


def default_model(model: str | None, dataset: str) -> str:
  """``--model`` default: the MNIST CNN for 28x28 grey images, LeNet for CIFAR, else MLP."""
  if model is not None:
    return model
  if dataset in _checks.TABULAR_DATASETS:
    return "mlp"
  if dataset == "cifar10":
    return "lenet"
  if dataset == "digits":
    return "mlp"
  return "cnn"


def check_model_for_dataset(model: str, dataset: str, flag: str = "--model") -> None:
  if dataset in _checks.TABULAR_DATASETS and model != "mlp":
    raise _checks.CLIError(f"{flag} {model!r} needs images; --dataset {dataset} is tabular "
                           "(use --model mlp).")
  if dataset == "digits" and model in ("cnn", "lenet"):
    raise _checks.CLIError(f"{flag} {model!r} needs images with a side divisible by 4; "
                           "--dataset digits has 8x8 images (use --model mlp).")


class Progress:
  """Progress with elapsed time and ETA.

  On a terminal it is a rich bar; otherwise (stdout is a file or a pipe) it
  prints one line per 10 % (every step when there are at most 10), so a log
  shows how far a run got while it runs.
  """

  def __init__(self, label: str, total: int, *, unit: str = "", con=None):
    self.label, self.total, self.unit = label, max(int(total), 1), unit
    self.con = con or console()
    self.done = 0
    self._bar = None
    self._next_pct = 10

  def __enter__(self):
    self.t0 = time.perf_counter()
    if self.con.is_terminal:
      from rich.progress import (BarColumn, MofNCompleteColumn, Progress as _P, TextColumn,
                                 TimeElapsedColumn, TimeRemainingColumn)
      self._bar = _P(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                     TimeRemainingColumn(), console=self.con, transient=False)
      self._bar.__enter__()
      self._task = self._bar.add_task(self.label, total=self.total, info="")
    return self

  def advance(self, n: int = 1, info: str = "") -> None:
    self.done = min(self.done + n, self.total)
    if self._bar is not None:
      self._bar.update(self._task, advance=n, info=info)
      return
    pct = 100 * self.done / self.total
    if self.total <= 10 or pct >= self._next_pct or self.done == self.total:
      while self._next_pct <= pct:
        self._next_pct += 10
      el = time.perf_counter() - self.t0
      eta = el / self.done * (self.total - self.done) if self.done else float("nan")
      extra = f"  {info}" if info else ""
      self.con.print(f"{self.label}: {self.done}/{self.total}{self.unit} ({pct:.0f}%), "
                     f"{el:.1f} s elapsed, ETA {eta:.1f} s{extra}", highlight=False)

  def __exit__(self, *exc):
    if self._bar is not None:
      self._bar.__exit__(*exc)
    return False


def train_model(model_name: str, data, *, epochs: int, seed: int, batch_size: int = 64,
                learning_rate: float = 1e-3, activation: str = "relu"):
  """Trains a zoo model with cross-entropy, showing progress; returns ``(model, seconds)``."""
  from rattr_jax import models
  from rattr_jax._quicktrain import fit

  model = models.create_model(model_name, input_shape=data.input_shape,
                              num_classes=data.num_classes, activation=activation, seed=seed)
  t0 = time.perf_counter()
  with Progress(f"training {model_name}", epochs, unit=" epochs") as prog:
    def progress(epoch, loss):
      if not math.isfinite(loss):
        raise ValueError(f"training {model_name} diverged (loss {loss}) in epoch {epoch + 1}.")
      prog.advance(1, info=f"loss {loss:.4f}")
    model = fit(model, data.x_train, data.y_train, epochs=epochs,
                batch_size=min(batch_size, len(data.x_train)), learning_rate=learning_rate,
                seed=seed, progress=progress)
  return model, time.perf_counter() - t0


def write_json(path: str, payload: dict[str, Any]) -> str:
  import numpy as np
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


def fmt(v: Any) -> str:
  """Table cell: 4 significant digits, never cut; ``–`` for None / NaN."""
  if v is None:
    return MISSING
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, (int,)) and not isinstance(v, bool):
    return str(v)
  try:
    f = float(v)
  except (TypeError, ValueError):
    return str(v)
  if math.isnan(f):
    return MISSING
  if isinstance(v, str):
    return v
  return f"{f:.4g}"


def print_table(title: str, columns: list[str], rows: list[list[Any]], con=None) -> None:
  """Prints a table whose numbers and headers are never truncated (``–`` marks missing)."""
  if not rows:
    return
  from rich.table import Table
  con = con or console()
  t = Table(title=title)
  for c in columns:
    first = c == columns[0]
    t.add_column(c, justify="left" if first else "right", overflow="fold",
                 min_width=min(len(c), 24), no_wrap=first and not con.is_terminal)
  for r in rows:
    t.add_row(*[fmt(v) for v in r])
  con.print(t)
