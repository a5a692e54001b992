"""Whole training steps with and without one of `rattr_jax.configure_cpu`'s XLA:CPU flags.

XLA reads ``XLA_FLAGS`` once, when its CPU client starts, so each setting runs in
its own process; the processes alternate (``--rounds`` times each) so that drift
of the machine hits both alike. Within a process every method is compiled first,
then timed: ``--repeats`` times ``--steps`` single steps (`TrainStep.step`) and one
fused call of as many steps (`TrainStep.run`), per step. The ratio reported is
without / with, per round and its median (> 1: the flag helps).

Flags (``--flag``):

* ``channel_vectorization``: `rattr_jax.UNROLL_FLAG` (LLVM fully unrolls only loops
  of at most 8 iterations), the other flags as `configure_cpu` sets them.

  python benchmarks/xla_flags.py                  # writes benchmarks/results/xla_flags.json
  python benchmarks/xla_flags.py --models cnn --rounds 3 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

FLAGS = ("channel_vectorization",)
MODELS = {"cnn": (28, 28, 1), "lenet": (32, 32, 3)}
METHODS = "ce,gradient_alignment,hessian_norm,activation_sensitivity,pgd"


def child(args) -> dict:
  import rattr_jax
  settings = rattr_jax.configure_cpu(**{args.flag: args.on == "on"})
  import jax
  import optax
  from rattr_jax import models, training

  out = {"configure_cpu": settings, "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": {}}
  b, steps = args.batch, args.steps
  for name in args.models.split(","):
    shape = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.random((steps * b, *shape), dtype=np.float32)
    y = rng.integers(0, 10, steps * b).astype(np.int32)
    idx = np.arange(steps * b, dtype=np.int32).reshape(steps, b)
    for method in args.methods.split(","):
      m = models.create_model(name, input_shape=shape, num_classes=10, activation="softplus:3")
      terms = training.resolve_terms(training.method_terms(method), m, x, y)
      ts = training.make_train_step(m, optax.adam(1e-3), terms)
      st = ts.init(0)
      t0 = time.perf_counter()
      st, *_ = ts.step(st, x[:b], y[:b])
      st, *_ = ts.run(st, x, y, idx)
      jax.block_until_ready(st)
      first = time.perf_counter() - t0
      single, fused = [], []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(steps):
          st, *_ = ts.step(st, x[i * b:(i + 1) * b], y[i * b:(i + 1) * b])
        jax.block_until_ready(st)
        single.append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        st, *_ = ts.run(st, x, y, idx)
        jax.block_until_ready(st)
        fused.append((time.perf_counter() - t0) / steps)
      out["rows"][f"{name}/{method}"] = {"single_s": single, "fused_s": fused,
                                         "compile_and_first_s": first}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--flag", default=FLAGS[0], choices=FLAGS)
  p.add_argument("--models", default="cnn,lenet")
  p.add_argument("--methods", default=METHODS)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--on", default="on", help=argparse.SUPPRESS)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "xla_flags.json"))
  args = p.parse_args()
  if args.child:
    print("RESULT" + json.dumps(child(args)), flush=True)
    return

  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RATTR_JAX_NO_XLA_FLAGS")}
  env.setdefault("JAX_PLATFORMS", "cpu")
  load_start = list(os.getloadavg())
  runs = {"on": [], "off": []}
  for r in range(args.rounds):
    for on in ("on", "off"):
      cmd = [sys.executable, os.path.abspath(__file__), "--child", "1", "--on", on,
             "--flag", args.flag, "--models", args.models, "--methods", args.methods,
             "--batch", str(args.batch), "--steps", str(args.steps),
             "--repeats", str(args.repeats)]
      proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(proc.returncode)
      res = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][6:])
      res["load_average"] = list(os.getloadavg())
      runs[on].append(res)
      print(f"round {r + 1} {args.flag}={on}:",
            {k: round(float(np.median(v["fused_s"])) * 1e3, 1) for k, v in res["rows"].items()},
            flush=True)
  summary = {}
  for key in runs["on"][0]["rows"]:
    row = {}
    for kind in ("single_s", "fused_s"):
      on = [float(np.median(x["rows"][key][kind])) for x in runs["on"]]
      off = [float(np.median(x["rows"][key][kind])) for x in runs["off"]]
      ratios = [b / a for a, b in zip(on, off)]
      row[kind.replace("_s", "")] = {"with_ms": [round(v * 1e3, 2) for v in on],
                                     "without_ms": [round(v * 1e3, 2) for v in off],
                                     "without_over_with_per_round": [round(v, 3) for v in ratios],
                                     "median_ratio": round(float(np.median(ratios)), 3)}
    summary[key] = row
    print(key, {k: v["median_ratio"] for k, v in row.items()})
  from _timing import device_info, write_result
  result = {"benchmark": "xla_flags",
            "settings": {"flag": args.flag, "models": args.models, "methods": args.methods,
                         "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
                         "rounds": args.rounds, "activation": "softplus:3",
                         "optimizer": "adam 1e-3",
                         "timing": "each setting in its own process, processes alternating; "
                                   "per step; ratio = without / with (> 1: the flag helps)"},
            "device": device_info(load_average_start=load_start,
                                  load_average_end=list(os.getloadavg())),
            "summary": summary, "runs": runs}
  write_result(args.out, result)


if __name__ == "__main__":
  main()
