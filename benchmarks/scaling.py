"""Throughput of the attack and training stages on 1, 2 or 4 devices and on 2 processes.

Configurations (each in fresh processes, since the device count is fixed when
JAX starts):

* ``1p x 1d``, ``1p x 2d``, ``1p x 4d``: one process with ``JAX_NUM_CPU_DEVICES``
  = 1, 2, 4 and a ``"data"`` mesh over them;
* ``2p x 1d``: two processes of one JAX job on localhost (`rattr launch`'s
  launcher; gloo collectives over TCP), one device each.

Stages, at a fixed global batch (strong scaling):

* attack: `attacks.topk_attack` (gradient explainer, ``num_steps`` signed
  steps) on the MNIST CNN, run through `distributed.per_example` with each
  process holding only its slice (`process_slice` + `shard_batch`); no
  communication inside the attack;
* training: `training.make_train_step(...).run` (CE, Adam, the MNIST CNN),
  ``steps`` fused steps per call; the gradient all-reduce crosses processes.

On this machine (2 CPU cores, shared) every configuration shares the same 2
cores, so this measures the overhead of sharding and of multi-process
collectives, not a speed-up: ideal scaling here is flat throughput. The
JSON records the settings and the load average before and after.

Usage: python benchmarks/scaling.py [--quick] [--out benchmarks/results/scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = (("1p x 1d", 1, 1), ("1p x 2d", 1, 2), ("1p x 4d", 1, 4), ("2p x 1d", 2, 1))


def worker(args) -> None:
  from rattr_jax import distributed as dist
  dist.initialize()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rattr_jax import attacks, attribution, models, training
  from rattr_jax.data import load_dataset

  mesh = dist.data_mesh()
  data = load_dataset("mnist_embedded", seed=0)
  model = models.create_model("cnn", input_shape=data.input_shape, num_classes=10, seed=0,
                              activation="softplus:10")
  fn = models.as_fn(model)
  out = {"processes": jax.process_count(), "devices": jax.device_count()}

  # Attack stage: each process loads only its slice.
  n = args.attack_batch
  x_all = data.x_test[:n].astype(np.float32)
  t_all = data.y_test[:n].astype(np.int32)
  sl = dist.process_slice(n)
  xs, ts, idx = dist.shard_batch((x_all[sl], t_all[sl], np.arange(sl.start, sl.stop)), mesh,
                                 global_size=n)
  cfg = attacks.AttackConfig(num_steps=args.attack_steps, k=50)
  run = dist.per_example(attacks.topk_attack, mesh)
  key = jax.random.key(0)

  def attack():
    return run(fn, attribution.gradient, xs, ts, config=cfg, key=key, index=idx).x_adv

  t0 = time.perf_counter()
  jax.block_until_ready(attack())
  out["attack_first_call_s"] = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(attack())
    times.append(time.perf_counter() - t0)
  out["attack_s"] = statistics.median(times)
  out["attack_examples_per_s"] = n / out["attack_s"]

  # Training stage: the loop's fused `run` (batch gathered on device).
  bs, steps = args.train_batch, args.train_steps
  tx, _ = training.make_optimizer(training.OptimizerConfig(name="adam", learning_rate=1e-3),
                                  steps, 1)
  ts_ = training.make_train_step(model, tx, [training.cross_entropy_term()], mesh=mesh)
  state = ts_.init(0)
  x_tr = ts_.place(np.asarray(data.x_train[:bs * steps], np.float32))
  y_tr = ts_.place(np.asarray(data.y_train[:bs * steps], np.int32))
  idx_tr = np.arange(bs * steps, dtype=np.int32).reshape(steps, bs)
  t0 = time.perf_counter()
  state, met = ts_.run(state, x_tr, y_tr, idx_tr)
  jax.block_until_ready(met)
  out["train_first_call_s"] = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    state, met = ts_.run(state, x_tr, y_tr, idx_tr)
    jax.block_until_ready(met)
    times.append(time.perf_counter() - t0)
  out["train_step_s"] = statistics.median(times) / steps
  out["train_examples_per_s"] = bs / out["train_step_s"]
  out["num_params"] = int(sum(np.size(l) for l in jax.tree_util.tree_leaves(state.params)))
  if dist.is_main_process():
    with open(args.worker_out, "w") as f:
      json.dump(out, f)


def run_config(name, procs, devs, args, tmp):
  from rattr_jax import distributed as _launch
  path = os.path.join(tmp, name.replace(" ", "") + ".json")
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--worker-out", path,
         "--attack-batch", str(args.attack_batch), "--attack-steps", str(args.attack_steps),
         "--train-batch", str(args.train_batch), "--train-steps", str(args.train_steps),
         "--repeats", str(args.repeats)]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  t0 = time.perf_counter()
  if procs == 1:
    env["JAX_NUM_CPU_DEVICES"] = str(devs)
    rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
  else:
    rc = _launch.launch(cmd, num_processes=procs, devices_per_process=devs, env=env)
  if rc != 0:
    raise SystemExit(f"{name}: worker failed with exit code {rc}")
  with open(path) as f:
    res = json.load(f)
  res["wall_s_including_startup"] = time.perf_counter() - t0
  return res


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "scaling.json"))
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
  p.add_argument("--attack-batch", type=int, default=16)
  p.add_argument("--attack-steps", type=int, default=20)
  p.add_argument("--train-batch", type=int, default=64)
  p.add_argument("--train-steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  if args.worker:
    worker(args)
    return
  if args.quick:
    args.attack_steps, args.train_steps, args.repeats = 5, 4, 2
  import tempfile
  load_before = os.getloadavg()
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, procs, devs in CONFIGS:
      results[name] = run_config(name, procs, devs, args, tmp)
      r = results[name]
      print(f"{name}: attack {r['attack_examples_per_s']:.1f} ex/s, "
            f"train {r['train_examples_per_s']:.0f} ex/s ({r['train_step_s'] * 1e3:.1f} ms/step)",
            flush=True)
  base = results["1p x 1d"]
  for r in results.values():
    r["attack_relative_to_1p1d"] = r["attack_examples_per_s"] / base["attack_examples_per_s"]
    r["train_relative_to_1p1d"] = r["train_examples_per_s"] / base["train_examples_per_s"]
  from _timing import device_info, write_result
  payload = {
      "benchmark": "scaling",
      "note": ("All configurations share the same 2 CPU cores: this measures the overhead of "
               "sharding and multi-process collectives (ideal = relative throughput 1.0), "
               "not a speed-up."),
      "settings": {"model": "cnn (MNIST, 28x28x1, softplus 10)",
                   "attack": f"topk_attack, gradient explainer, {args.attack_steps} steps, "
                             f"global batch {args.attack_batch}, per_example",
                   "training": f"CE + Adam, global batch {args.train_batch}, "
                               f"{args.train_steps} fused steps per call",
                   "repeats": args.repeats, "statistic": "median"},
      "device": device_info(),
      "load_average_before": load_before, "load_average_after": os.getloadavg(),
      "results": results,
  }
  write_result(args.out, payload)


if __name__ == "__main__":
  main()
