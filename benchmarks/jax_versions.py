"""The conv-net zoo's convolutions on other JAX releases: would upgrading JAX make them faster?

The training rows of ``training_cost.py`` that stay behind PyTorch are bound by
XLA:CPU's convolution kernels (``conv_ops.py``). This script asks whether a newer
jaxlib changes that. For every convolution of the MNIST CNN and the CIFAR LeNet
(``conv_ops.LAYERS``; batch 128, float32, NHWC, "SAME") it times plain
``lax.conv_general_dilated`` forward, input gradient and weight gradient (its
VJPs, jitted) under each Python interpreter given, each with its own JAX
installed. The interpreters run in turn, ``--rounds`` times, each round a fresh
process, with the XLA flags that `rattr_jax.configure_cpu` sets and inline
dispatch. The child needs only ``jax`` and ``numpy`` (not rattr_jax), so an
interpreter of another Python version works, e.g. jax 0.12 (Python >= 3.12):

    /root/.pyenv/versions/3.12.1/bin/python -m venv /tmp/v12
    /tmp/v12/bin/pip install jax==0.12.0.1 jaxlib==0.12.0.1
    python benchmarks/jax_versions.py --python /tmp/v12/bin/python

``ratio_vs_first`` is (first interpreter's median) / (this one's): > 1 means
faster than the first (the project's pinned JAX, when ``--python`` lists only
others).

Usage: python benchmarks/jax_versions.py [--python PY ...] [--rounds N] [--repeats N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 128


def child(layers: dict, repeats: int) -> dict:
  """Per-op medians (seconds) of this interpreter's JAX; only jax and numpy are imported."""
  import time

  import jax
  import jax.numpy as jnp
  jax.config.update("jax_cpu_enable_async_dispatch", False)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda a: conv(a, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda b: conv(x, b), w)[1](g)[0])
  out = {}
  for name, (hw, cin, cout, k) in layers.items():
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (BATCH, hw, hw, cin))
    w = jax.random.normal(kw, (k, k, cin, cout)) * 0.1
    g = jnp.ones((BATCH, hw, hw, cout))
    calls = {"forward": lambda: fwd(x, w), "input_grad": lambda: dx(x, w, g),
             "weight_grad": lambda: dw(x, w, g)}
    res = {}
    for op, f in calls.items():
      jax.block_until_ready(f())
      ts = []
      for _ in range(repeats):
        jax.block_until_ready(f())  # each timed call follows a call of itself
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t0)
      res[op] = statistics.median(ts)
    out[name] = res
  return {"jax": jax.__version__, "python": sys.version.split()[0], "ops": out}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--python", action="append", default=None,
                 help="an interpreter with its own JAX (repeatable); this one is always first")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--repeats", type=int, default=25)
  p.add_argument("--out", default=os.path.join(HERE, "results", "jax_versions.json"))
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child is not None:
    print("RESULT" + json.dumps(child(json.loads(args.child), args.repeats)), flush=True)
    return

  sys.path.insert(0, HERE)
  from conv_ops import LAYERS  # noqa: E402
  import rattr_jax  # noqa: E402
  from _timing import write_result  # noqa: E402

  layers = {n: list(v) for n, v in LAYERS.items()}
  pythons = [sys.executable] + [os.path.abspath(q) if os.sep in q else q for q in (args.python or [])]
  for q in pythons:
    if not os.path.exists(q):
      raise SystemExit(f"--python: no such interpreter: {q}")
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "").split()
  flags += [rattr_jax.EIGEN_CONV_FLAG, rattr_jax.UNROLL_FLAG]  # as configure_cpu sets them
  env["XLA_FLAGS"] = " ".join(flags)
  env.setdefault("JAX_PLATFORMS", "cpu")
  load_start = list(os.getloadavg())
  runs = {q: [] for q in pythons}
  for r in range(args.rounds):
    for q in pythons:
      cmd = [q, os.path.abspath(__file__), "--child", json.dumps(layers),
             "--repeats", str(args.repeats)]
      proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{q} failed (exit {proc.returncode})")
      res = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][6:])
      runs[q].append(res)
      print(f"round {r + 1} jax {res['jax']} (python {res['python']}): " + "  ".join(
          f"{n} " + "/".join(f"{v * 1e3:.2f}" for v in ops.values())
          for n, ops in res["ops"].items()) + " ms (forward/input/weight)", flush=True)
  summary = {}
  for q, rs in runs.items():
    ops = {n: {op: statistics.median(r["ops"][n][op] for r in rs) for op in rs[0]["ops"][n]}
           for n in rs[0]["ops"]}
    summary[f"jax {rs[0]['jax']} (python {rs[0]['python']})"] = {"interpreter": q, "ops": ops}
  first = next(iter(summary.values()))["ops"]
  for s in summary.values():
    s["ratio_vs_first"] = {n: {op: first[n][op] / v for op, v in ops.items()}
                           for n, ops in s["ops"].items()}
  write_result(args.out, {
      "benchmark": "jax_versions",
      "settings": {"batch": BATCH, "layers": layers, "rounds": args.rounds,
                   "repeats": args.repeats, "xla_flags": env["XLA_FLAGS"],
                   "op": "jitted lax.conv_general_dilated and its VJPs, NHWC/HWIO, SAME",
                   "note": "each interpreter in its own process, in turn; median over rounds of "
                           "per-round medians"},
      "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
      "cpu_count": os.cpu_count(),
      "versions": summary})
  for k, s in summary.items():
    print(k, {n: {op: round(v, 2) for op, v in r.items()} for n, r in s["ratio_vs_first"].items()})


if __name__ == "__main__":
  main()
