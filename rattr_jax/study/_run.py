"""Running a study: stages, content-keyed units, resume, progress.

Stages: ``train`` -> ``explain`` -> ``attack`` -> ``score`` -> ``aggregate`` ->
``report``. Every unit of work (one model; one explainer's maps of one model;
one attack at one radius; one model's metrics) writes one file whose name is a
hash of everything that determines it, written atomically (temporary file, then
rename). A re-run skips every unit whose file exists, so a study killed at any
moment continues where it stopped (training itself resumes from its orbax
checkpoint), a finished study does nothing, and changing one method re-runs
only the units of that method.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from rattr_jax.study import _config as C

LOCK_NAME = "study.json"


# ------------------------------------------------------------------ processes
# A study may run as several processes of one JAX job (`rattr launch -n N -- study ...`,
# or one process per host): every process runs the same stages and computes together over
# the global mesh; process 0 alone writes files. Every decision that depends on the output
# directory (is this unit done? resume this training?) is taken by process 0 and broadcast,
# so the processes never disagree because one looked at the disk earlier than another.
def is_main() -> bool:
  """``True`` in process 0, the one that writes (always ``True`` in a single-process run)."""
  import jax
  return jax.process_index() == 0


def agree(flags) -> list[bool]:
  """Process 0's ``flags`` (booleans) in every process (unchanged in a single-process run)."""
  import jax
  flags = [bool(f) for f in flags]
  if jax.process_count() == 1 or not flags:
    return flags
  from jax.experimental import multihost_utils
  out = multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32))
  return [bool(v) for v in np.asarray(out)]


def barrier(name: str) -> None:
  """Waits until every process gets here (so that they see what process 0 wrote before)."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"rattr-study-{name}")


# ----------------------------------------------------------------- output files
def check_out_dir(out: str) -> str:
  """Validates ``--out`` before any work: creatable, a directory, writable."""
  if not isinstance(out, str) or not out.strip():
    raise ValueError("`--out` must be a non-empty directory path.")
  path = os.path.abspath(os.path.expanduser(out))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"`--out` {out!r} exists and is not a directory.")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"`--out` {out!r}: {parent!r} is not a directory.")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
      pass
  except OSError as e:
    raise ValueError(f"`--out` {out!r} is not writable ({e.strerror or e}).") from None
  return path


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, payload: Any) -> None:
  def w(tmp):
    with open(tmp, "w") as f:
      json.dump(payload, f, indent=2, sort_keys=False, default=_json_default)
  _atomic_write(path, w)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  raise TypeError(type(o).__name__)


def save_unit(path: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
  def w(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, __meta__=np.array(json.dumps(meta, default=_json_default)),
               **{k: np.asarray(v) for k, v in arrays.items()})
  _atomic_write(path, w)


def load_unit(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  with np.load(path, allow_pickle=False) as z:
    meta = json.loads(str(z["__meta__"]))
    return meta, {k: z[k] for k in z.files if k != "__meta__"}


def check_lock(out: str, config: C.StudyConfig) -> None:
  """Refuses to mix two studies with different data or model in one ``--out``."""
  path = os.path.join(out, LOCK_NAME)
  new = config.locked()
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)["locked"]
    except (OSError, ValueError, KeyError):
      raise ValueError(f"`--out` {out!r} holds an unreadable {LOCK_NAME}; use a new "
                       f"directory.") from None
    for field in ("model", "model_settings"):
      if json.dumps(old.get(field), sort_keys=True) != json.dumps(new[field], sort_keys=True,
                                                                  default=list):
        raise ValueError(f"`{field}` changed under the existing `--out` {out!r} "
                         f"({old.get(field)!r} -> {new[field]!r}); use a new `--out`.")
    for k, v in new["data"].items():
      if old.get("data", {}).get(k) != v:
        raise ValueError(f"`data.{k}` changed under the existing `--out` {out!r} "
                         f"({old.get('data', {}).get(k)!r} -> {v!r}); use a new `--out`.")
  barrier("lock-checked")  # every process has read the old lock file before it is replaced
  if is_main():
    write_json(path, {"locked": new, "config": config.to_dict()})


def enable_compilation_cache(path: str) -> None:
  """`rattr_jax.enable_compilation_cache` for every program, however quick to compile.

  A study compiles one program per (architecture, explainer, attack, metric);
  with the cache a re-run, a resumed run, or another study on the same models
  loads them instead of compiling (measured: a CNN integrated-gradients call,
  8.4 s cold, 1.1 s from the cache, on 2 loaded cores).
  """
  import rattr_jax
  rattr_jax.enable_compilation_cache(path, min_compile_time_secs=0.0)


# --------------------------------------------------------------------- progress
class Progress:
  """A progress bar with ETA on a terminal; one line per unit otherwise."""

  def __init__(self, enabled: bool, console=None):
    self.enabled = enabled
    self.console = console
    self._rich = None

  def __enter__(self):
    if self.enabled and self.console is not None and self.console.is_terminal:
      from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RP, TextColumn,
                                 TimeElapsedColumn, TimeRemainingColumn)
      self._rich = RP(TextColumn("[bold]{task.description:<10}"), BarColumn(),
                      MofNCompleteColumn(), TextColumn("{task.fields[what]}"),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                      console=self.console, transient=False)
      self._rich.__enter__()
    return self

  def __exit__(self, *exc):
    if self._rich is not None:
      self._rich.__exit__(*exc)

  def stage(self, name: str, total: int):
    return _Stage(self, name, total)


class _Stage:

  def __init__(self, prog: Progress, name: str, total: int):
    self.prog, self.name, self.total, self.done = prog, name, total, 0
    self.t0 = time.perf_counter()
    self.task = None
    if prog._rich is not None:
      self.task = prog._rich.add_task(name, total=max(total, 1), what="")

  def advance(self, what: str = "", cached: bool = False) -> None:
    self.done += 1
    if self.task is not None:
      self.prog._rich.update(self.task, advance=1, what=what)
    elif self.prog.enabled:
      el = time.perf_counter() - self.t0
      eta = el / self.done * (self.total - self.done)
      tag = " (cached)" if cached else ""
      print(f"[{self.name}] {self.done}/{self.total} {what}{tag}  elapsed {el:.0f}s  "
            f"ETA {eta:.0f}s", flush=True)


# ---------------------------------------------------------------------- manifest
def _git_commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=5)
    return out.stdout.strip() if out.returncode == 0 else "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _versions() -> dict[str, str]:
  from importlib.metadata import PackageNotFoundError, version
  out = {}
  for pkg in ("rattr_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
              "scipy"):
    try:
      out[pkg] = version(pkg)
    except PackageNotFoundError:
      out[pkg] = "not installed"
  return out


def manifest(config: C.StudyConfig, *, eval_hash: str, stage_seconds: dict, units: dict,
             failures: list) -> dict:
  import jax
  return {
      "study": config.name, "source": config.source, "versions": _versions(),
      "git_commit": _git_commit(), "python": sys.version.split()[0],
      "platform": platform.platform(), "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
      "seeds": list(config.seeds), "eval_set_sha256": eval_hash,
      "num_eval": config.data.num_eval, "stage_seconds": stage_seconds, "units": units,
      "failed_models": failures, "config": config.to_dict(),
  }
