"""The training loop: epochs, progress bar, evaluation, checkpoints, resume, NaN stop."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rattr_jax.data import LazyRows, take_rows
from rattr_jax.training import _config as C
from rattr_jax.training import _engine as E
from rattr_jax.training import _terms as T
from rattr_jax.training._checkpoint import Checkpointer
from rattr_jax.training._term import Term, TermSetup

REFRESH_SIZE = 256
LOG_NAME = "log.json"
PLOT_NAME = "curves.png"
#: A training loss above this is treated as divergence: training stops like on a NaN.
MAX_LOSS = 1e6


#: ``name -> build(config, dataset) -> model`` or ``(model, terms)``; see `register_model`.
MODEL_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_model(name: str, build: Callable[..., Any]) -> None:
  """Makes ``TrainConfig(model=name)`` (and ``rattr train --model name``) build a custom model.

  Args:
    name: model name; must not shadow a zoo model.
    build: ``build(config, dataset)`` returning an NNX model mapping
      ``[B, *F]`` to logits, or ``(model, terms)`` with the model's own loss
      terms (``None`` to use ``config.terms``).
  """
  from rattr_jax.models import MODELS
  if name in MODELS:
    raise ValueError(f"`name` {name!r} is a zoo model; choose another name.")
  MODEL_BUILDERS[name] = build


class TrainResult(NamedTuple):
  """Outcome of `train`.

  Attributes:
    model: the final model (inference mode) as an NNX module.
    state: the final `TrainState` (the last good one after a NaN stop).
    history: one dict per completed epoch (losses, accuracies, lr, timing).
    status: ``"completed"``, ``"nan"`` (a non-finite loss or gradient) or
      ``"diverged"`` (a loss above `MAX_LOSS`).
    message: a human-readable summary (the reason after a NaN stop).
    best_val_accuracy: best validation accuracy seen.
    out_dir: output directory, or ``None``.
    config: the config that was run.
  """

  model: nnx.Module
  state: E.TrainState
  history: list
  status: str
  message: str
  best_val_accuracy: float
  out_dir: str | None
  config: C.TrainConfig


def _split_val(data, fraction: float, seed: int):
  if fraction <= 0:
    return data.x_train, data.y_train, data.x_test, data.y_test, "test"
  rng = np.random.default_rng(seed + 7919)
  idx = rng.permutation(len(data.x_train))
  n_val = max(1, int(round(fraction * len(idx))))
  va, tr = idx[:n_val], idx[n_val:]
  x, y = data.x_train, data.y_train
  return take_rows(x, tr), y[tr], take_rows(x, va), y[va], "val"


def _chunk_size(steps_per_epoch: int, requested: int | None, target: int = 20) -> int:
  if requested is not None:
    return min(requested, steps_per_epoch)
  divisors = [d for d in range(1, min(steps_per_epoch, 2 * target) + 1) if steps_per_epoch % d == 0]
  best = max(d for d in divisors if d <= max(target, 1)) if any(d <= target for d in divisors) else 1
  return best if best >= target // 3 else min(target, steps_per_epoch)


class _LazyChunks:
  """Evaluation chunks made when iterated (`LazyRows` data: nothing is held between
  evaluations; each chunk's rows are read when it is used)."""

  def __init__(self, make, starts):
    self.make, self.starts = make, starts

  def __iter__(self):
    return (self.make(i) for i in self.starts)


def _padded_rows(a, lo: int, hi: int, fill) -> np.ndarray:
  """Rows ``lo .. hi-1`` of ``a`` as numpy, rows at or past ``len(a)`` filled with ``fill``."""
  part = np.asarray(a[min(lo, len(a)):min(hi, len(a))])
  if len(part) == hi - lo:
    return part
  shape = (hi - lo - len(part),) + tuple(a.shape[1:])
  return np.concatenate([part, np.full(shape, fill, part.dtype)])


def _eval_chunks(x, y, chunk: int, multiple: int, mesh=None):
  """``(x, y)`` in chunks of ``chunk`` rows (a multiple of ``multiple``), the last padded with
  zero inputs and label -1. With a multi-process ``mesh`` each process supplies only its rows
  of each chunk. In-memory data is placed once and reused by every evaluation; `LazyRows`
  chunks are read each time they are used (nothing is held between evaluations)."""
  chunk = int(math.ceil(min(chunk, len(x)) / multiple) * multiple)
  n = int(math.ceil(len(x) / chunk) * chunk)
  y = np.asarray(y, np.int32)
  if mesh is not None:
    from rattr_jax import distributed
    sh = NamedSharding(mesh, P("data"))
    put = lambda a, i, fill: distributed.global_array(
        (chunk,) + a.shape[1:], sh, lambda ix: _padded_rows(
            a, i + (ix[0].start or 0), i + (chunk if ix[0].stop is None else ix[0].stop),
            fill)[(slice(None),) + tuple(ix[1:])])
  else:
    put = lambda a, i, fill: jnp.asarray(_padded_rows(a, i, i + chunk, fill))
  chunks = _LazyChunks(lambda i: (put(x, i, 0), put(y, i, -1)), range(0, n, chunk))
  return chunks if isinstance(x, LazyRows) else list(chunks)


def _process_batches(mesh, x, y, idx):
  """``(x[idx], y[idx])`` for ``idx [k, B]`` as global arrays sharded over the batch axis,
  each process reading only the examples of its own columns (``mesh=None``: one device)."""
  if mesh is None:
    return jnp.asarray(x[idx]), jnp.asarray(y[idx])
  from rattr_jax import distributed
  sh = NamedSharding(mesh, P(None, "data"))
  return tuple(distributed.global_array(idx.shape + a.shape[1:], sh,
                                        lambda ix, a=a: a[idx[ix[0], ix[1]]])
               for a in (x, y))


def _evaluate(ts, state, chunks, n):
  loss, correct = 0.0, 0
  for xc, yc in chunks:
    l, c = ts.evaluate(state, xc, yc)
    loss += float(l)
    correct += int(c)
  return loss / n, correct / n


def resolve_terms(terms: Sequence[Term | T.LossTerm], model: nnx.Module, x_example: np.ndarray,
                  y_example: np.ndarray, *, conv_impl: str | None = "auto") -> list[T.LossTerm]:
  """The engine's `LossTerm`\\ s of ``terms``, each `Term` validated and prepared against
  ``model`` before tracing (`LossTerm`\\ s pass through).

  ``conv_impl`` is the training passes' convolution implementation (as in
  `make_train_step`); e.g. it decides whether the Hessian term can use
  forward-over-reverse.
  """
  setup = TermSetup(model=model, x=np.asarray(x_example[:2]), y=np.asarray(y_example[:2]),
                    conv_impl=conv_impl)
  return [t.loss_term(setup) if isinstance(t, Term) else t for t in terms]


def _has_checkpoint(out_dir) -> bool:
  latest = os.path.join(os.fspath(out_dir), "checkpoints", "latest")
  try:
    return any(e.isdigit() for e in os.listdir(latest))
  except OSError:
    return False


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, prefix + k + ".")
    elif (list(va) if isinstance(va, (list, tuple)) else va) != (
        list(vb) if isinstance(vb, (list, tuple)) else vb):
      out.append(prefix + k)
  return out


def _fmt(v: float) -> str:
  return f"{v:.4g}"


def train(config: C.TrainConfig, *, model: nnx.Module | None = None,
          terms: Sequence[T.LossTerm] | None = None, dataset=None, out_dir: str | None = None,
          resume: bool = False, progress: bool = True,
          callback: Callable[[dict], None] | None = None) -> TrainResult:
  """Trains a classifier with the robust-training engine.

  Each epoch: shuffle (keyed by ``config.seed`` and the epoch), refresh the
  terms' aux data, run the jitted steps in fused chunks with a progress bar
  (loss, every term, accuracy, throughput), evaluate in inference mode, save
  the latest checkpoint (and the best-validation one), append to
  ``out_dir/log.json`` and redraw ``out_dir/curves.png``.

  A non-finite loss or gradient stops training at once with a clear message
  and ``status="nan"``; the step that produced it is not applied, nothing is
  saved, and the last good checkpoint (end of the previous epoch) stays
  intact. A finite loss above `MAX_LOSS` (1e6) stops it the same way with
  ``status="diverged"`` (the steps of that chunk are not saved either).

  An ``out_dir`` that already holds a checkpoint is refused unless
  ``resume=True``; ``resume=True`` with no checkpoint warns and starts from
  scratch. Both are checked before the data is loaded.

  With ``resume=True`` the latest checkpoint in ``out_dir`` is restored
  (parameters, optimizer state, RNG, step, epoch, history) and training
  continues with the next epoch; since every random draw is keyed by the
  seed, the epoch and the global step, the final parameters equal those of an
  uninterrupted run.

  Args:
    config: a `TrainConfig` (see `preset`).
    model: optional NNX model to train instead of ``config.model`` from the zoo
      (e.g. a SENN); it must map ``[B, *F]`` to logits ``[B, C]``.
    terms: optional terms (`Term`\\ s or engine `LossTerm`\\ s) replacing ``config.terms``.
    dataset: optional `rattr_jax.data.Dataset` instead of loading ``config.dataset``
      (loaded lazily per ``config.lazy_data``). Inputs held as `rattr_jax.data.LazyRows`
      are never read whole: each chunk of steps and each evaluation chunk reads its rows
      (with several processes, each process only its own) when it is used.
    out_dir: directory for checkpoints, ``log.json``, ``config.json`` and
      ``curves.png``; ``None`` keeps everything in memory.
    resume: continue from the latest checkpoint in ``out_dir``.
    progress: show the rich progress bar.
    callback: called with each epoch's log entry after it is saved (raising
      from it aborts training, like a kill).

  Returns:
    A `TrainResult`.
  """
  from rattr_jax.data import load_dataset  # looked up at call time (tests replace it)
  from rattr_jax.models import create_model

  config = C.validate(config)
  if resume and out_dir is None:
    raise ValueError("`resume=True` needs `out_dir`.")
  if out_dir is not None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
      raise ValueError(f"`out_dir` {os.fspath(out_dir)!r} is an existing file, not a directory.")
    found = _has_checkpoint(out_dir)
    if found and not resume:
      raise ValueError(f"`out_dir` {os.fspath(out_dir)!r} already holds a training run; pass "
                       "`resume=True` to continue it, or choose another `out_dir`.")
    if resume and not found:
      warnings.warn(f"`resume=True` but `out_dir` {os.fspath(out_dir)!r} holds no checkpoint; "
                    "training starts from scratch.", stacklevel=2)
  data = dataset if dataset is not None else load_dataset(
      config.dataset, data_dir=config.data_dir, seed=config.seed, lazy=config.lazy_data)
  if config.max_train is not None or config.max_test is not None:
    data = data._replace(x_train=take_rows(data.x_train, slice(None, config.max_train)),
                         y_train=data.y_train[:config.max_train],
                         x_test=take_rows(data.x_test, slice(None, config.max_test)),
                         y_test=data.y_test[:config.max_test])
  x_tr, y_tr, x_val, y_val, val_name = _split_val(data, config.val_fraction, config.seed)
  has_test = val_name == "val"
  if model is None:
    if config.model in MODEL_BUILDERS:
      built = MODEL_BUILDERS[config.model](config, data)
      model, built_terms = built if isinstance(built, tuple) else (built, None)
      terms = built_terms if terms is None else terms
    else:
      model = create_model(config.model, input_shape=data.input_shape,
                           num_classes=data.num_classes, activation=config.activation,
                           seed=config.seed)
  mesh = E.default_mesh(config.data_parallel)
  n_dev = 1 if mesh is None else mesh.devices.size
  if config.batch_size % n_dev:
    raise ValueError(f"`batch_size` ({config.batch_size}) must be divisible by the number of "
                     f"devices ({n_dev}) for data-parallel training.")
  bs = config.batch_size
  spe = len(x_tr) // bs
  if spe == 0:
    raise ValueError(f"`batch_size` ({bs}) exceeds the training-set size ({len(x_tr)}).")
  terms = resolve_terms(config.terms if terms is None else terms, model, x_tr, y_tr)
  tx, schedule = E.make_optimizer(config.optimizer, spe, config.epochs)
  r = min(REFRESH_SIZE, spe * bs) // n_dev * n_dev
  # Only shapes are needed (to size the terms' aux data): nothing is read or placed.
  spec = lambda a, n: jax.ShapeDtypeStruct((n,) + tuple(a.shape[1:]),
                                           jax.dtypes.canonicalize_dtype(a.dtype))
  ts = E.make_train_step(model, tx, terms, seed=config.seed, mesh=mesh,
                         refresh_example=(spec(x_tr, r), spec(y_tr, r)))
  state = ts.init(config.seed)

  ckpt = Checkpointer(out_dir) if out_dir is not None else None
  history: list[dict] = []
  step_log: dict[str, list] = {"step": [], "loss": [], "acc": [], "lr": []}
  best_val = -1.0
  start_epoch = 0
  cfg_dict = config.to_dict()
  if out_dir is not None:
    os.makedirs(out_dir, exist_ok=True)
  if resume:
    restored = ckpt.restore(state)
    if restored is not None:
      saved_state, meta = restored
      # `lazy_data` changes how rows are read, never a value: resumable either way.
      diff = [d for d in _config_diff(meta["config"], cfg_dict) if d not in ("epochs", "lazy_data")]
      if diff:
        raise ValueError(f"Cannot resume from {out_dir}: the config differs from the "
                         f"checkpoint's in {diff}.")
      state = ts.place(jax.tree_util.tree_map(jnp.asarray, saved_state))
      history = meta["history"]
      step_log = meta["step_log"]
      best_val = meta["best_val_accuracy"]
      start_epoch = int(meta["epoch"]) + 1
  main = jax.process_index() == 0  # multi-host: every process trains, process 0 writes files
  progress = progress and main
  if out_dir is not None and main:
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(cfg_dict, f, indent=2)

  # One process: the training set lives on the devices and each batch is gathered there.
  # Several: every process puts on its devices only its columns of each global batch
  # (and its rows of each evaluation chunk); the batches are the same as with one process.
  # Lazy data (`LazyRows`): batches are read from it chunk by chunk (by each process, only
  # its columns), with one process too; nothing holds the whole training set.
  multi = mesh is not None and jax.process_count() > 1
  stream = multi or isinstance(x_tr, LazyRows)
  if stream:
    x_dev = y_dev = None
    y_tr = np.asarray(y_tr, np.int32)
  else:
    x_dev = ts.place(jnp.asarray(x_tr))
    y_dev = ts.place(jnp.asarray(y_tr, jnp.int32))
  val_chunks = _eval_chunks(x_val, y_val, config.eval_batch_size, n_dev, mesh if multi else None)
  test_chunks = (_eval_chunks(data.x_test, data.y_test, config.eval_batch_size, n_dev,
                              mesh if multi else None) if has_test else None)
  k = _chunk_size(spe, config.steps_per_call)
  base_key = jax.random.key(config.seed)
  status, message = "completed", ""
  term_names = [t.name for t in terms]

  prog = _progress(progress)
  with prog:
    task = prog.add_task("train", total=spe, epoch="", stats="")
    for epoch in range(start_epoch, config.epochs):
      t0 = time.perf_counter()
      perm = np.asarray(jax.random.permutation(jax.random.fold_in(base_key, epoch), len(x_tr)))
      idx = perm[:spe * bs].reshape(spe, bs).astype(np.int32)
      if any(t.refresh is not None for t in terms):
        ref = perm[:r]
        state = ts.refresh(state, jnp.asarray(x_tr[ref]), jnp.asarray(y_tr[ref], jnp.int32))
      sums: dict[str, float] = {}
      count = 0
      prog.reset(task, total=spe)
      prog.update(task, epoch=f"epoch {epoch + 1}/{config.epochs}")
      stopped = False
      for s in range(0, spe, k):
        tc = time.perf_counter()
        if stream:
          state, met = ts.run_batches(state, *_process_batches(mesh, x_tr, y_tr, idx[s:s + k]))
        else:
          state, met = ts.run(state, x_dev, y_dev, jnp.asarray(idx[s:s + k]))
        met = jax.device_get(met)
        n_steps = len(met["loss"])
        finite = np.asarray(met["finite"], bool)
        huge = np.abs(np.asarray(met["loss"], np.float64)) > MAX_LOSS
        if not finite.all() or (huge & finite).any():
          nan = not finite.all() and (np.argmin(finite) <= np.argmax(huge) or not huge.any())
          bad = int(np.argmin(finite)) if nan else int(np.argmax(huge))
          gstep = (int(jax.device_get(state.step)) + 1 if nan  # the bad update was not applied
                   else int(jax.device_get(state.step)) - n_steps + bad + 1)
          vals = ", ".join(f"{nm}={float(met[nm][bad]):.4g}" for nm in ["loss"] + term_names)
          last = (f"epoch {len(history)} (checkpoint in {ckpt.root})" if (ckpt and history) else
                  "none written")
          if nan:
            message = (f"Non-finite loss or gradient at epoch {epoch + 1}, global step {gstep} "
                       f"({vals}); training stopped. The update was not applied. Last good "
                       f"checkpoint: {last}.")
          else:
            message = (f"Training diverged at epoch {epoch + 1}, global step {gstep}: loss "
                       f"above {MAX_LOSS:g} ({vals}); training stopped, nothing of this epoch "
                       f"was saved. Last good checkpoint: {last}. Try a smaller learning rate.")
          status = "nan" if nan else "diverged"
          for j in range(bad):
            _accumulate(sums, met, j)
          stopped = True
          break
        for j in range(n_steps):
          _accumulate(sums, met, j)
        count += n_steps
        first = int(jax.device_get(state.step)) - n_steps
        step_log["step"] += list(range(first + 1, first + n_steps + 1))
        step_log["loss"] += [float(v) for v in met["loss"]]
        step_log["acc"] += [float(v) for v in met["acc"]]
        terms_log = step_log.setdefault("terms", {})
        for nm in term_names:
          terms_log.setdefault(nm, []).extend(float(v) for v in met[nm])
        lrs = np.broadcast_to(np.asarray(schedule(np.arange(first, first + n_steps))), (n_steps,))
        step_log["lr"] += [float(v) for v in lrs]
        dt = time.perf_counter() - tc
        shown = "  ".join(f"{nm} {_fmt(sums[nm] / count)}" for nm in ["loss"] + term_names
                          if nm in sums)
        prog.update(task, advance=n_steps,
                    stats=f"{shown}  acc {sums['acc'] / count:.3f}  {n_steps * bs / dt:,.0f} ex/s")
      if stopped:
        prog.console.print(f"[bold red]{message}")
        break
      val_loss, val_acc = _evaluate(ts, state, val_chunks, len(x_val))
      entry: dict[str, Any] = {"epoch": epoch + 1, "step": int(jax.device_get(state.step))}
      entry.update({f"train_{nm}": sums[nm] / count for nm in sorted(sums)})
      entry.update({f"{val_name}_loss": val_loss, f"{val_name}_accuracy": val_acc})
      if has_test:
        entry["test_loss"], entry["test_accuracy"] = _evaluate(ts, state, test_chunks,
                                                               len(data.x_test))
      entry["learning_rate"] = float(schedule(int(jax.device_get(state.step)) - 1))
      entry["seconds"] = time.perf_counter() - t0
      entry["examples_per_second"] = spe * bs / entry["seconds"]
      is_best = val_acc > best_val
      best_val = max(best_val, val_acc)
      entry["best_val_accuracy"] = best_val
      history.append(entry)
      prog.console.print(
          f"epoch {epoch + 1}: loss {entry['train_loss']:.4f}  train acc "
          f"{entry['train_acc']:.3f}  {val_name} acc {val_acc:.4f}  "
          f"({entry['seconds']:.1f} s)")
      if out_dir is not None:
        meta = {"epoch": epoch, "config": cfg_dict, "history": history, "step_log": step_log,
                "best_val_accuracy": best_val}
        ckpt.save(state, meta, best=is_best)  # every process: orbax writes multi-host
        if main:
          _write_log(out_dir, cfg_dict, history, step_log, status, message)
          from rattr_jax.training._plot import plot_curves
          plot_curves(os.path.join(out_dir, PLOT_NAME), history, step_log, title=_title(config))
      if callback is not None:
        callback(entry)
  if out_dir is not None:
    if main:
      _write_log(out_dir, cfg_dict, history, step_log, status, message)
    ckpt.close()
  if status == "completed":
    message = (f"Trained {config.epochs} epochs; best {'validation' if has_test else 'test'} "
               f"accuracy {best_val:.4f}.")
  return TrainResult(model=ts.model_of(state), state=state, history=history, status=status,
                     message=message, best_val_accuracy=best_val, out_dir=out_dir, config=config)


def _title(config):
  return f"{config.model} / {config.dataset} / {config.objective}"


def _accumulate(sums, met, j):
  for nm, v in met.items():
    if nm == "finite":
      continue
    sums[nm] = sums.get(nm, 0.0) + float(v[j])


def _write_log(out_dir, cfg, history, step_log, status, message):
  with open(os.path.join(out_dir, LOG_NAME), "w") as f:
    json.dump({"config": cfg, "status": status, "message": message, "epochs": history,
               "steps": step_log}, f, indent=2)


class _NoProgress:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False

  def add_task(self, *a, **k):
    return 0

  def reset(self, *a, **k):
    pass

  def update(self, *a, **k):
    pass

  class console:  # noqa: N801
    @staticmethod
    def print(*a, **k):
      pass


class _LineProgress:
  """Progress for a stdout that is not a terminal (a log file, a pipe): one plain line
  per 10 % of each epoch with the elapsed time and an ETA, never wrapped."""

  def __init__(self):
    self.total, self.done, self.fields, self.next_pct = 1, 0, {}, 10
    self.t0 = time.perf_counter()

  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False

  def add_task(self, *a, total=1, **fields):
    self.total, self.fields = max(int(total), 1), dict(fields)
    return 0

  def reset(self, task, total=None, **k):
    self.total = max(int(total or self.total), 1)
    self.done, self.next_pct, self.t0 = 0, 10, time.perf_counter()

  def update(self, task, advance=0, **fields):
    self.fields.update(fields)
    if not advance:
      return
    self.done = min(self.done + advance, self.total)
    pct = 100 * self.done / self.total
    if pct + 1e-9 < self.next_pct and self.done < self.total:
      return
    while self.next_pct <= pct:
      self.next_pct += 10
    el = time.perf_counter() - self.t0
    eta = el / self.done * (self.total - self.done)
    print(f"{self.fields.get('epoch', '')}: {self.done}/{self.total} steps ({pct:.0f}%), "
          f"{el:.1f} s elapsed, ETA {eta:.1f} s  {self.fields.get('stats', '')}", flush=True)

  class console:  # noqa: N801
    @staticmethod
    def print(*a, **k):
      import re
      print(*(re.sub(r"\[/?[a-z ]*\]", "", str(x)) for x in a), flush=True)


def _progress(enabled: bool):
  if not enabled:
    return _NoProgress()
  import sys
  if not sys.stdout.isatty():
    return _LineProgress()
  from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                             TimeElapsedColumn, TimeRemainingColumn)
  return Progress(TextColumn("[bold]{task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), transient=False)
