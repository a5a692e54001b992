"""Training steps with and without `rattr_jax.configure_cpu`'s retained heap, in one process.

glibc's ``malloc`` settings can change at any time, so the two settings are
timed in the same process, alternating per repeat (separate processes on this
2-core VM differed by up to 30% for the same setting, more than the effect):

* ``on``: `rattr_jax.HEAP_TOP_PAD` (512 MiB) kept at the top of the heap when it
  trims (``mallopt(M_TOP_PAD)``);
* ``off``: no pad (``mallopt(M_TOP_PAD, 0)``, then ``malloc_trim(0)`` so that the
  memory freed so far goes back to the kernel, as glibc does by default);
* ``mmap`` (with ``--mmap``): the pad, but blocks above the threshold from ``mmap``
  as glibc does (``M_MMAP_MAX`` at its default, 65,536), the setting before
  `rattr_jax.HEAP_MMAP_MAX` (0: no block from ``mmap``) was added;
* with ``--peer`` a PyTorch CE step of the same architecture runs before each
  setting's calls (the in-process peer of the other benchmarks, whose own
  allocations change what the heap's top can hold).

Both keep blocks up to `rattr_jax.HEAP_MMAP_THRESHOLD` (32 MiB) on the heap:
glibc's own threshold adapts towards that value as large blocks are freed, and
setting the pad fixes it (``mallopt`` turns the adaptation off), so "off" is
glibc's default after warm-up. Per repeat and setting: one untimed call, then one
timed call, of a single step (`TrainStep.step`) and of ``--steps`` fused steps
(`TrainStep.run`); minor page faults of the timed call (``getrusage``).

  python benchmarks/retain_heap.py            # writes benchmarks/results/retain_heap.json
  python benchmarks/retain_heap.py --models cnn --methods ce --repeats 3
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rattr_jax  # noqa: E402

rattr_jax.configure_cpu(retain_heap=False)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from rattr_jax import models, training  # noqa: E402
from _timing import device_info, write_result  # noqa: E402
from training_cost import MODELS, method_configs, objective  # noqa: E402

_M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -2, -3, -4
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX


def _faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="cnn,lenet")
  p.add_argument("--methods", default="ce,gradient_alignment,hessian_norm,pgd")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--mmap", action="store_true",
                 help="also time the pad with mmap-ed large blocks (setting 'mmap')")
  p.add_argument("--peer", action="store_true",
                 help="run a PyTorch CE step before each setting (needs the bench extra)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "retain_heap.json"))
  args = p.parse_args()
  libc = ctypes.CDLL(None)
  if not libc.mallopt(_M_MMAP_THRESHOLD, rattr_jax.HEAP_MMAP_THRESHOLD):
    raise SystemExit("mallopt failed: Linux with glibc only")
  load_start = list(os.getloadavg())
  cfgs = method_configs()
  rows = []
  b, steps = args.batch, args.steps
  for name in args.models.split(","):
    shape = MODELS[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (b * steps, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, b * steps).astype(np.int32))
    idx = jnp.arange(b * steps).reshape(steps, b)
    for method in args.methods.split(","):
      m = models.create_model(name, input_shape=shape, num_classes=10, activation="softplus:3",
                              seed=0)
      terms = training.resolve_terms(objective(cfgs[method]), m, np.asarray(x[:b]),
                                     np.asarray(y[:b]))
      ts = training.make_train_step(m, optax.adam(1e-3), terms)
      box = {"state": ts.init(0)}

      def single(ts=ts, box=box):
        box["state"], met = ts.step(box["state"], x[:b], y[:b])
        jax.block_until_ready(met["loss"])

      def fused(ts=ts, box=box):
        box["state"], met = ts.run(box["state"], x, y, idx)
        jax.block_until_ready(met["loss"])

      single()
      fused()
      peer = None
      if args.peer:
        from training_cost import torch_steps
        ref = models.create_model(name, input_shape=shape, num_classes=10,
                                  activation="softplus:3", seed=0)
        peer = torch_steps(ref, np.asarray(x[:b]), np.asarray(y[:b]), cfgs)[1]["ce"]
      settings = ("off", "mmap", "on") if args.mmap else ("off", "on")
      times = {f"{k}_{s}": [] for k in ("single", "fused") for s in settings}
      faults = {k: [] for k in times}
      for _ in range(args.repeats):
        for setting in settings:
          libc.mallopt(_M_TOP_PAD, 0 if setting == "off" else rattr_jax.HEAP_TOP_PAD)
          libc.mallopt(_M_MMAP_MAX, rattr_jax.HEAP_MMAP_MAX if setting == "on"
                       else _GLIBC_MMAP_MAX)
          if setting == "off":
            libc.malloc_trim(0)
          if peer is not None:
            peer()
          for kind, f, n in (("single", single, 1), ("fused", fused, steps)):
            f()
            f0, t0 = _faults(), time.perf_counter()
            f()
            times[f"{kind}_{setting}"].append((time.perf_counter() - t0) / n)
            faults[f"{kind}_{setting}"].append((_faults() - f0) / n)
      row = {"model": name, "method": method, "batch": b, "steps": steps,
             "median_ms_per_step": {k: round(statistics.median(v) * 1e3, 2)
                                    for k, v in times.items()},
             "median_page_faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
             "all_s": times, "load_average": list(os.getloadavg())}
      for kind in ("single", "fused"):
        for base in settings[:-1]:
          r = [a / c for a, c in zip(times[f"{kind}_{base}"], times[f"{kind}_on"])]
          row[f"{kind}_{base}_over_on"] = {"median": round(statistics.median(r), 3),
                                           "min": round(min(r), 3), "max": round(max(r), 3)}
      rows.append(row)
      print(name, method, row["median_ms_per_step"],
            {f"{k}_{base}": row[f"{k}_{base}_over_on"]["median"]
             for k in ("single", "fused") for base in settings[:-1]},
            {k: int(v) for k, v in row["median_page_faults_per_step"].items()}, flush=True)
  result = {"benchmark": "retain_heap",
            "settings": {"repeats": args.repeats, "steps": args.steps, "batch": b,
                         "activation": "softplus:3", "optimizer": "adam 1e-3",
                         "top_pad_bytes": rattr_jax.HEAP_TOP_PAD,
                         "mmap_threshold_bytes": rattr_jax.HEAP_MMAP_THRESHOLD,
                         "mmap_max": {"on": rattr_jax.HEAP_MMAP_MAX, "off": _GLIBC_MMAP_MAX,
                                      "mmap": _GLIBC_MMAP_MAX},
                         "settings": list(settings), "peer": bool(args.peer),
                         "timing": "one process; settings alternate per repeat; one untimed "
                                   "call then one timed call each; ratio = off (or mmap) / on "
                                   "(> 1: retaining the heap helps)"},
            "device": device_info(load_average_start=load_start,
                                  load_average_end=list(os.getloadavg())),
            "results": rows}
  write_result(args.out, result)


if __name__ == "__main__":
  main()
