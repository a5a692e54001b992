"""Cost of one training step of each robust-training method, relative to plain CE.

Measures `rattr_jax.training.make_train_step(...).step` (one jitted, donated
step: forward, loss terms, backward, Adam update) at batch 128 on the MNIST CNN
(28x28x1) and the CIFAR LeNet of Joo et al. (32x32x3), softplus beta 3, for
every method of `rattr_jax.training.METHODS`, with the papers' settings (AGA
eps 4/255 and (0.01, 1.0); Hessian lambda 1e-3, one probe; PGD / TRADES
eps 8/255, 10 steps of 2/255; FGSM eps 8/255). Medians over repeats, methods
timed round-robin.

Peer (with the `bench` extra): a plain PyTorch implementation of the same
gradient-alignment step (and a CE step) on the same architecture and the same
weights, in the same run, round-robin with the JAX steps.

XLA flag: ``--xla_cpu_experimental_ynn_fusion_type=`` (empty) is read when
the XLA:CPU backend is created, so each setting runs in its own subprocess:
"on" (the flag in XLA_FLAGS) and "off" (without it); the "off" child times CE
and gradient alignment (and torch again, so ratios stay paired).

Usage: python benchmarks/training_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
BATCH = 128
MODELS = {"cnn": (28, 28, 1), "lenet": (32, 32, 3)}


def method_configs():
  from rattr_jax.training import MethodConfig
  return {
      "ce": MethodConfig(name="ce"),
      "gradient_alignment": MethodConfig(name="gradient_alignment", epsilon=4 / 255,
                                         lambda_l2=0.01, lambda_cos=1.0),
      "hessian_norm": MethodConfig(name="hessian_norm", lam=1e-3),
      "input_gradient_norm": MethodConfig(name="input_gradient_norm", lam=1.0),
      "activation_sensitivity": MethodConfig(name="activation_sensitivity", lam=1.0,
                                             epsilon=4 / 255, layers=("fc1",)),
      "fgsm": MethodConfig(name="fgsm", epsilon=8 / 255),
      "pgd": MethodConfig(name="pgd", epsilon=8 / 255, num_steps=10, step_size=2 / 255),
      "trades": MethodConfig(name="trades", epsilon=8 / 255, num_steps=10, step_size=2 / 255),
  }


# ------------------------------------------------------------------ torch ----
def torch_steps(model, x_np, y_np, eps, lam_l2, lam_cos):
  """Plain PyTorch CE and gradient-alignment steps (Adam) on a twin of ``model``."""
  import torch
  import torch.nn.functional as F
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _torch_models import to_torch_input, torch_from_flax

  tm = torch_from_flax(model).train()
  opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
  x = to_torch_input(tm, x_np)
  y = torch.from_numpy(y_np.astype("int64"))

  def ga_loss(delta):
    xs = x.clone().requires_grad_(True)
    logits = tm(xs)
    ce = F.cross_entropy(logits, y)
    g_src = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xs, retain_graph=True)[0]
    g_src = g_src.detach()  # detach_source_grad=True, as in the reference code
    xp = (x + delta).detach().requires_grad_(True)
    g = torch.autograd.grad(tm(xp).gather(1, y[:, None]).sum(), xp, create_graph=True)[0]
    a, b = g_src.flatten(1), g.flatten(1)
    l2 = ((a - b) ** 2).sum(1).mean()
    cosd = ((1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)) / 2).mean()
    return ce, lam_l2 * l2 + lam_cos * cosd

  def ga_step():
    opt.zero_grad(set_to_none=True)
    delta = eps * (2 * torch.rand_like(x) - 1)
    ce, reg = ga_loss(delta)
    (ce + reg).backward()
    opt.step()

  def ce_step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(tm(x), y).backward()
    opt.step()

  return tm, ga_loss, ga_step, ce_step


# ------------------------------------------------------------------ child ----
def child(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from rattr_jax import attribution, models, regularizers, training
  from rattr_jax.training import _loop

  try:
    import torch
    torch.set_num_threads(2)
  except ImportError:  # pragma: no cover
    torch = None

  methods = method_configs()
  if args.methods:
    methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
  out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "models": {}}
  for name in args.models.split(","):
    shape = MODELS[name]
    rng = np.random.default_rng(0)
    x_np = rng.uniform(0, 1, (BATCH,) + shape).astype(np.float32)
    y_np = rng.integers(0, 10, BATCH).astype(np.int32)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    # label -> (training-pass conv, attack-loop conv, method); "auto" = the library default.
    variants = {m: ("auto", "auto", cfg) for m, cfg in methods.items()}
    if args.variants:
      for m in ("ce", "gradient_alignment"):
        if m in methods:
          variants[m + "[conv=fast]"] = ("fast", "fast", methods[m])
          variants[m + "[conv=lax]"] = ("lax", "lax", methods[m])
      if "pgd" in methods:
        variants["pgd[attack conv=lax]"] = ("auto", "lax", methods["pgd"])
    runners, compile_s = {}, {}
    out["default_conv_impls"] = list(training.default_conv_impls())
    for label, (conv_impl, attack_impl, cfg) in variants.items():
      model = models.create_model(name, input_shape=shape, num_classes=10,
                                  activation="softplus:3", seed=0)
      config = training.TrainConfig(model=name, method=cfg)
      terms = _loop.resolve_terms(config, model, x_np, y_np, conv_impl=conv_impl)
      ts = training.make_train_step(model, optax.adam(1e-3), terms, conv_impl=conv_impl,
                                    attack_conv_impl=attack_impl)
      holder = {"state": ts.init(0)}

      def run(ts=ts, holder=holder):
        holder["state"], met = ts.step(holder["state"], x, y)
        jax.block_until_ready(met["loss"])

      t0 = time.perf_counter()
      run()
      compile_s[label] = time.perf_counter() - t0
      runners[label] = run
    check = None
    if torch is not None and not args.no_torch:
      ref_model = models.create_model(name, input_shape=shape, num_classes=10,
                                      activation="softplus:3", seed=0)
      cga = methods.get("gradient_alignment", method_configs()["gradient_alignment"])
      tm, ga_loss, ga_step, ce_step = torch_steps(ref_model, x_np, y_np, cga.epsilon,
                                                  cga.lambda_l2, cga.lambda_cos)
      # Same function check: the torch GA loss equals rattr_jax's on the same weights and delta.
      key = jax.random.key(0)
      delta = cga.epsilon * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
      jv = float(regularizers.gradient_alignment(models.as_fn(ref_model), attribution.gradient,
                                                 x, y, key=key,
                                                 epsilon=cga.epsilon, lambda_l2=cga.lambda_l2,
                                                 lambda_cos=cga.lambda_cos))
      from _torch_models import to_torch_input
      tv = float(ga_loss(to_torch_input(tm, np.asarray(delta)))[1].detach())
      check = {"jax_ga_value": jv, "torch_ga_value": tv, "rel_diff": abs(jv - tv) / abs(tv)}
      runners["torch:gradient_alignment"] = ga_step
      runners["torch:ce"] = ce_step
      for r in ("torch:gradient_alignment", "torch:ce"):
        runners[r]()  # warm-up
    times = {k: [] for k in runners}
    for _ in range(args.repeats):
      for k, run in runners.items():
        t0 = time.perf_counter()
        run()
        times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"seconds_per_step_median": med, "seconds_all": times, "compile_seconds": compile_s,
           "cost_vs_ce": {k: med[k] / med["ce"] for k in med if not k.startswith("torch")
                          and "ce" in med}}
    if "torch:ce" in med:
      res["cost_vs_ce"]["torch:gradient_alignment"] = (med["torch:gradient_alignment"] /
                                                       med["torch:ce"])
      res["jax_over_torch"] = {m: med[m] / med["torch:" + m] for m in ("ce", "gradient_alignment")
                               if m in med}
      res["peer_check"] = check
    out["models"][name] = res
    print(f"[{name}] " + "  ".join(f"{k} {v * 1e3:.0f}ms" for k, v in med.items()), flush=True)
  return out


# ------------------------------------------------------------------ parent ---
def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--models", default="cnn,lenet")
  p.add_argument("--methods", default=None)
  p.add_argument("--variants", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--no-torch", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--skip-flag-off", action="store_true", help="only the flag-on child")
  args = p.parse_args()
  repeats = args.repeats or (3 if args.quick else 7)
  if args.child:
    args.repeats = repeats
    print("RESULT" + json.dumps(child(args)), flush=True)
    return

  def run_child(flag_on: bool, extra: list[str]) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FLAG.rstrip("="))]
    if flag_on:
      flags.append(FLAG)
    env["XLA_FLAGS"] = " ".join(flags)
    env["RATTR_JAX_XLA_CPU_DEFAULTS"] = "1" if flag_on else "0"  # library opt-out, if present
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "on" if flag_on else "off",
           "--repeats", str(repeats), "--models", args.models] + extra
    print("$", " ".join(cmd), f"(XLA_FLAGS={env['XLA_FLAGS']!r})", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    sys.stdout.write("".join(l + "\n" for l in proc.stdout.splitlines()
                             if not l.startswith("RESULT")))
    if proc.returncode != 0:
      sys.stderr.write(proc.stderr[-5000:])
      raise SystemExit(proc.returncode)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])

  extra_on = ["--variants"] + (["--methods", args.methods] if args.methods else [])
  on = run_child(True, extra_on)
  off = None
  if not args.skip_flag_off:
    off = run_child(False, ["--methods", "ce,gradient_alignment"])

  import jax
  try:
    import torch
    torch_version = torch.__version__
  except ImportError:  # pragma: no cover
    torch_version = None
  flag_effect = {}
  if off is not None:
    for name in on["models"]:
      a, b = on["models"][name]["seconds_per_step_median"], off["models"][name][
          "seconds_per_step_median"]
      flag_effect[name] = {f"speedup_{m}": b[m] / a[m] for m in ("ce", "gradient_alignment")
                           if m in a and m in b}
      if "torch:gradient_alignment" in b:
        flag_effect[name]["jax_over_torch_ga_flag_off"] = (b["gradient_alignment"] /
                                                           b["torch:gradient_alignment"])
  result = {
      "benchmark": "training_cost",
      "settings": {"quick": args.quick, "repeats": repeats, "batch": BATCH,
                   "activation": "softplus:3", "optimizer": "adam 1e-3",
                   "methods": {k: v.__dict__ for k, v in method_configs().items()},
                   "models": MODELS, "inputs": "uniform [0, 1], random labels",
                   "xla_flag": FLAG,
                   "note": "each setting in its own process; round-robin within a process; "
                           "machine shared with other jobs"},
      "device": {"jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
                 "torch": torch_version, "torch_threads": 2, "cpu_count": os.cpu_count(),
                 "platform": platform.platform(), "load_average": list(os.getloadavg())},
      "flag_on": on,
      "flag_off": off,
      "flag_effect": flag_effect,
  }
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "training_cost.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", path)
  for name, r in on["models"].items():
    print(name, "cost vs CE:", {k: round(v, 2) for k, v in r["cost_vs_ce"].items()})
    if "jax_over_torch" in r:
      print(name, "JAX / torch time:", {k: round(v, 3) for k, v in r["jax_over_torch"].items()})
  print("flag effect:", flag_effect)


if __name__ == "__main__":
  main()
