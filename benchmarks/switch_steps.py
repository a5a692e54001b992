"""Paired single training steps with two values of one implementation switch.

`fused_steps.py` times single and fused steps of each value one after the other;
on this VM its single-step rows for the second-order methods moved by up to 30%
between two values whose programs differ only in a random draw's shape
(``_random.MATRIX_DRAWS``, the same values). Here each repeat times, for every
(method, value), one untimed step and then ``--steps`` timed ones, the values
alternating within the repeat, and the ratio is paired per repeat.

Switches: ``<module>.<NAME>`` of a module of `fused_steps.SWITCH_MODULES`
(`rattr_jax._random`, `rattr_jax.models._layers`, ``_conv`` or ``_activation``; read
when traced), set with `fused_steps.switched`.

  python benchmarks/switch_steps.py --model cnn --methods ce,gradient_alignment \\
      --switch _layers.POOL_VALUE --values select,reduce --out NAME.json
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from training_cost import MODELS  # noqa: E402  (imports no JAX: ``--help`` stays quick)


def _value(text):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="cnn", choices=sorted(MODELS))
  p.add_argument("--methods", default="ce,gradient_alignment,hessian_norm,"
                 "activation_sensitivity,pgd")
  p.add_argument("--switch", required=True,
                 help="<module>.<NAME>, module one of fused_steps.SWITCH_MODULES (_random, "
                 "_layers, _conv, _activation)")
  p.add_argument("--values", required=True, help="two values, before,after (Python literals "
                 "or strings)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=9)
  p.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
  p.add_argument("--out", default="switch_steps.json", help="file name in benchmarks/results")
  args = p.parse_args()
  module_name, _, attr = args.switch.partition(".")
  values = [_value(v) for v in args.values.split(",")]
  if len(values) != 2:
    p.error(f"--values needs two values; got {args.values!r}")

  import jax
  import numpy as np

  from _timing import device_info, write_result
  from fused_steps import SWITCH_MODULES, switched  # configures the CPU as `rattr` does
  from training_cost import method_configs, step_runner

  if module_name not in SWITCH_MODULES or not attr:
    p.error(f"--switch must be <module>.<NAME> with module one of {', '.join(SWITCH_MODULES)}; "
            f"got {args.switch!r}")
  if not hasattr(SWITCH_MODULES[module_name], attr):
    p.error(f"{module_name} has no switch {attr!r}")
  methods = args.methods.split(",")
  cfgs = method_configs()
  unknown = [m for m in methods if m not in cfgs]
  if unknown:
    p.error(f"unknown methods {unknown}; valid: {', '.join(cfgs)}")

  shape = MODELS[args.model]
  rng = np.random.default_rng(0)
  x_np = rng.uniform(0, 1, (args.batch,) + shape).astype(np.float32)
  y_np = rng.integers(0, 10, args.batch).astype(np.int32)
  x, y = jax.numpy.asarray(x_np), jax.numpy.asarray(y_np)
  steps, compile_s = {}, {}
  for m in methods:
    for v in values:
      with switched((module_name, attr), v):  # read when the step is traced: its first call
        step = step_runner(args.model, shape, cfgs[m], x_np, y_np, x, y)
        t0 = time.perf_counter()
        step()
        compile_s[f"{m}[{v}]"] = time.perf_counter() - t0
      steps[(m, v)] = step
  load_start = list(os.getloadavg())
  times = {k: [] for k in steps}
  for _ in range(args.repeats):
    for k, step in steps.items():
      step()
      t0 = time.perf_counter()
      for _ in range(args.steps):
        step()
      times[k].append((time.perf_counter() - t0) / args.steps)
  rows = {}
  for m in methods:
    a, b = times[(m, values[0])], times[(m, values[1])]
    ratio = [ta / tb for ta, tb in zip(a, b)]  # > 1: the second value is faster
    rows[m] = {"ms_median": {str(values[0]): 1e3 * statistics.median(a),
                             str(values[1]): 1e3 * statistics.median(b)},
               "before_over_after": {"median": statistics.median(ratio), "min": min(ratio),
                                     "max": max(ratio)}}
    print(f"{args.model} {m}: {values[0]} {1e3 * statistics.median(a):.1f} ms, {values[1]} "
          f"{1e3 * statistics.median(b):.1f} ms, ratio {statistics.median(ratio):.3f} "
          f"[{min(ratio):.3f}-{max(ratio):.3f}]")
  write_result(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", args.out), {
      "benchmark": "switch_steps",
      "settings": {"model": args.model, "batch": args.batch, "switch": args.switch,
                   "values": [str(v) for v in values], "repeats": args.repeats,
                   "steps": args.steps, "activation": "softplus:3",
                   "timing": "per repeat: every (method, value) one untimed step then `steps` "
                             "timed ones, values alternating; ratio = before / after time, "
                             "paired per repeat (> 1: the second value is faster)"},
      "device": device_info(load_average_start=load_start),
      "compile_seconds": compile_s, "results": rows})


if __name__ == "__main__":
  main()
