"""Shared timing for the benchmarks: one warm-up call each, then round-robin repeats.

Also `write_result`, the one way every benchmark writes its JSON, and
`device_info`, the one "device" block they record.

Round-robin (every repeat times each variant once, in turn) makes load from
other processes hit all variants alike, so per-repeat ratios stay paired.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import jax


def round_robin(fns: Mapping[str, Callable[[], object]], repeats: int, *,
                sync: Mapping[str, Callable[[object], object]] | None = None,
                warmup: int = 1, settle: float = 0.0,
                rewarm: int = 0) -> tuple[dict[str, list[float]], dict[str, float]]:
  """Times each callable ``repeats`` times, in turn.

  Args:
    fns: name -> zero-argument callable.
    repeats: timed calls per callable.
    sync: optional name -> function applied to the callable's result before
      the clock stops (default `jax.block_until_ready`; pass ``lambda a: a``
      for eager PyTorch, which is synchronous).
    warmup: untimed calls per callable before timing; the first one's time
      (tracing + compilation for JAX) is returned.
    settle: seconds to sleep before each timed call, so that the previous
      variant's worker threads (PyTorch's keep spinning after a parallel
      region) are idle. Every variant then starts cold, which costs some
      frameworks more than others (Captum 3x on a small MLP): a diagnostic,
      not a fair default.
    rewarm: untimed calls of a variant right before each of its timed calls,
      so that each timed call runs with its own threads awake and its data in
      cache.

  Returns:
    ``(times, first_call)``: per-name lists of seconds, and the first call's
    seconds per name.
  """
  sync = dict(sync or {})
  done = {n: sync.get(n, jax.block_until_ready) for n in fns}
  first = {}
  for n, f in fns.items():
    for i in range(max(1, warmup)):
      t0 = time.perf_counter()
      done[n](f())
      if i == 0:
        first[n] = time.perf_counter() - t0
  times = {n: [] for n in fns}
  for _ in range(repeats):
    for n, f in fns.items():
      if settle:
        time.sleep(settle)
      for _ in range(rewarm):
        done[n](f())
      t0 = time.perf_counter()
      done[n](f())
      times[n].append(time.perf_counter() - t0)
  return times, first


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
  """Median seconds per name."""
  return {n: statistics.median(v) for n, v in times.items()}


def write_result(path: str, result: dict) -> None:
  """Writes ``result`` to ``path`` as indented JSON (making its directory) and says so."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", path)


def device_info(**extra) -> dict:
  """The machine a result was measured on: JAX devices and version, the peer's
  version (``torch``: ``None`` without the ``bench`` extra), CPU count, platform,
  Python and the load average now (``extra`` entries are added as given)."""
  info = {"jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": sys.version.split()[0]}
  try:
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:  # pragma: no cover - the bench extra is optional
    info["torch"] = None
  try:
    info["load_average"] = list(os.getloadavg())
  except OSError:  # pragma: no cover - not on every platform
    info["load_average"] = None
  info.update(extra)
  return info
