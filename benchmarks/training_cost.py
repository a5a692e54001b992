"""Cost of one training step of each robust-training method, relative to plain CE.

Measures `rattr_jax.training.make_train_step(...).step` (one jitted, donated
step: forward, loss terms, backward, Adam update) at batch 128 on the MNIST CNN
(28x28x1) and the CIFAR LeNet of Joo et al. (32x32x3), softplus beta 3, for
every method of `rattr_jax.training.METHODS`, with the papers' settings (AGA
eps 4/255 and (0.01, 1.0); Hessian lambda 1e-3, one probe; PGD / TRADES
eps 8/255, 10 steps of 2/255; FGSM eps 8/255). Medians over repeats, methods
timed round-robin.

Peers (with the `bench` extra): plain PyTorch steps of CE, gradient alignment,
Hessian norm, activation sensitivity and PGD-AT (`torch_steps`) on the same
architecture, weights and batch, round-robin with the JAX steps in the same
process; ``torch_over_jax`` holds the paired per-repeat ratios (median, min,
max) and ``peer_check`` shows that each torch regularizer equals rattr_jax's on
the same random draw.

Timing: round-robin over all steps (ours and PyTorch's) in one process; each
timed call follows ``--rewarm`` (default 1) untimed calls of the same step, as
in a training loop. Without it a JAX step right after a PyTorch one shared the
2 cores with PyTorch's OpenMP threads, which keep spinning after their work:
MNIST CNN CE 13.8 ms after itself, 17.3 ms right after a PyTorch step, 13.4 ms
after a 50 ms pause (PyTorch's step 11.4 / 12.1 ms after itself / ours).

Fused steps: `TrainStep.run` (the `lax.scan` over steps that `train()` uses)
against `TrainStep.step`, per step, for CE and gradient alignment at batch 32
and 128 (``--run-batches``). Inside a loop body XLA:CPU once compiled plain
convolution weight-gradients with a slow generic emitter (9x per step); the
custom-VJP convolution's weight gradient keeps fused steps as fast as single
ones, and these rows keep it visible.

Default ``rattr train`` epoch: ``rattr train --epochs 2 --max-train 2048
--no-progress`` (fast_cpu preset: MNIST CNN, batch 32) in a subprocess, as a
user runs it; the steady (second) epoch's seconds are recorded. It was 12-13 s
with the ``--xla_cpu_experimental_ynn_fusion_type=`` flag that ``rattr train``
used to set, against 1.2 s without.

XLA flag (``--with-flag``): a second child with the YNN flag in XLA_FLAGS
(read when the backend starts) times CE and gradient alignment again, single
and fused, so the flag's effect stays on record.

Several models per program (``--many mlp,cnn,lenet``): `train_many`'s vmapped
program against S sequential fused runs, S in ``--many-s`` (`many_rows`).

Usage: python benchmarks/training_cost.py [--quick] [--with-flag [--flag F]]
       [--methods ce,pgd,...] [--many mlp,cnn,lenet [--many-s 2,4,8]] [--out NAME.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
BATCH = 128
MODELS = {"cnn": (28, 28, 1), "lenet": (32, 32, 3)}


def method_configs():
  """Method -> its training term with the papers' settings (`rattr_jax.training.terms`)."""
  from rattr_jax import training as T
  return {
      "ce": T.CrossEntropy(),
      "gradient_alignment": T.GradientAlignment(epsilon=4 / 255, lambda_l2=0.01, lambda_cos=1.0),
      "hessian_norm": T.HessianNorm(lam=1e-3),
      "input_gradient_norm": T.InputGradientNorm(lam=1.0),
      "activation_sensitivity": T.ActivationSensitivity(lam=1.0, epsilon=4 / 255,
                                                        layers=("fc1",)),
      "fgsm": T.FGSM(epsilon=8 / 255),
      "pgd": T.PGD(epsilon=8 / 255, num_steps=10, step_size=2 / 255),
      "trades": T.TRADES(epsilon=8 / 255, num_steps=10, step_size=2 / 255),
  }


def objective(term):
  """The method's objective: the term alone (CE, FGSM, PGD) or CE + the term."""
  from rattr_jax import training as T
  return (term,) if term.name in ("ce", "fgsm", "pgd") else (T.CrossEntropy(), term)


# ------------------------------------------------------------------ torch ----
#: Methods with a plain PyTorch counterpart here (``torch:<method>`` rows).
TORCH_METHODS = ("ce", "gradient_alignment", "hessian_norm", "activation_sensitivity", "pgd")


def torch_steps(model, x_np, y_np, cfgs):
  """Plain PyTorch training steps (Adam) on a twin of ``model``, one per `TORCH_METHODS`.

  Each is written the way a PyTorch user would (eager autograd, the reference
  papers' code where there is one) with the settings of ``cfgs`` (method ->
  `MethodConfig`), on the same weights and batch as the JAX step:

  * ``ce``: cross-entropy, backward, Adam;
  * ``gradient_alignment``: Joo et al.'s step (detached source gradient,
    uniform ``delta``; l2 + cosine terms);
  * ``hessian_norm``: CE + ``lam * mean ||H v||^2`` with ``H`` the input
    Hessian of the true-class logit and one Gaussian probe ``v``
    (Hutchinson; double backward for ``H v``, a third for the parameters);
  * ``activation_sensitivity``: CE + ``lam * mean |fc1(x + delta) - fc1(x)|``
    (the pre-activation output of ``fc1`` read with a forward hook, uniform
    ``delta`` of radius ``epsilon``);
  * ``pgd``: Madry et al.'s PGD-AT: an L-inf PGD attack on the CE (uniform
    random start, ``num_steps`` signed steps, projection to the ball and
    [0, 1]) with ``torch.autograd.grad`` w.r.t. the input only, then CE at
    the adversarial batch, backward, Adam.

  Returns ``(steps, values)``: name -> zero-argument step function, and
  name -> function of the random draw (numpy, NHWC) returning the
  regularizer's value (for the same-function check against rattr_jax).
  """
  import torch
  import torch.nn.functional as F
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _torch_models import to_torch_input, torch_from_flax

  tm = torch_from_flax(model).train()
  opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
  x = to_torch_input(tm, x_np)
  y = torch.from_numpy(y_np.astype("int64"))
  ga, hn, asn, pgd = (cfgs["gradient_alignment"], cfgs["hessian_norm"],
                      cfgs["activation_sensitivity"], cfgs["pgd"])

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
    return ce, ga.lambda_l2 * l2 + ga.lambda_cos * cosd

  def hn_loss(v):
    xs = x.clone().requires_grad_(True)
    logits = tm(xs)
    ce = F.cross_entropy(logits, y)
    g = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xs, create_graph=True)[0]
    hv = torch.autograd.grad((g * v).sum(), xs, create_graph=True)[0]
    return ce, (hv * hv).flatten(1).sum(1).mean()

  layer = getattr(tm, asn.layers[0])
  feats = []
  layer.register_forward_hook(lambda mod, inp, out: feats.append(out))

  def as_loss(delta):
    feats.clear()
    logits = tm(x)
    ce = F.cross_entropy(logits, y)
    tm(x + delta)
    clean, pert = feats
    feats.clear()
    return ce, (pert - clean).abs().flatten(1).mean(1).mean()

  def pgd_attack(delta0):
    eps, alpha = pgd.epsilon, pgd.step_size
    lo, hi = x - eps, x + eps
    xa = (x + delta0).clamp(0, 1)
    for _ in range(pgd.num_steps):
      xa = xa.detach().requires_grad_(True)
      g = torch.autograd.grad(F.cross_entropy(tm(xa), y, reduction="sum"), xa)[0]
      xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), lo), hi).clamp(0, 1)
    return xa.detach()

  def uniform(eps):
    return eps * (2 * torch.rand_like(x) - 1)

  def ce_step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(tm(x), y).backward()
    opt.step()

  def ga_step():
    opt.zero_grad(set_to_none=True)
    ce, reg = ga_loss(uniform(ga.epsilon))
    (ce + reg).backward()
    opt.step()

  def hn_step():
    opt.zero_grad(set_to_none=True)
    ce, reg = hn_loss(torch.randn_like(x))
    (ce + hn.lam * reg).backward()
    opt.step()

  def as_step():
    opt.zero_grad(set_to_none=True)
    ce, reg = as_loss(uniform(asn.epsilon))
    (ce + asn.lam * reg).backward()
    opt.step()

  def pgd_step():
    xa = pgd_attack(uniform(pgd.epsilon))
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(tm(xa), y).backward()
    opt.step()

  def t(a):
    return to_torch_input(tm, a)

  def pgd_value(delta0):
    xa = pgd_attack(t(delta0))
    with torch.no_grad():
      return float(F.cross_entropy(tm(xa), y)), xa

  values = {
      "gradient_alignment": lambda d: float(ga_loss(t(d))[1].detach()),
      "hessian_norm": lambda v: float(hn_loss(t(v))[1].detach()),
      "activation_sensitivity": lambda d: float(as_loss(t(d))[1].detach()),
      "pgd": pgd_value,
  }
  steps = {"ce": ce_step, "gradient_alignment": ga_step, "hessian_norm": hn_step,
           "activation_sensitivity": as_step, "pgd": pgd_step}
  return tm, steps, values


def peer_checks(model, tm, values, x, y, cfgs, methods) -> dict:
  """The torch counterparts compute rattr_jax's regularizers: same weights, same random draw."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rattr_jax import attribution, models, regularizers
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _torch_models import from_torch

  fn = models.as_fn(model)
  key = jax.random.key(0)
  out = {}

  def rel(j, t):
    return {"jax": j, "torch": t, "rel_diff": abs(j - t) / max(abs(t), 1e-30)}

  if "gradient_alignment" in methods:
    c = cfgs["gradient_alignment"]
    delta = c.epsilon * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    jv = float(regularizers.gradient_alignment(fn, attribution.gradient, x, y, key=key,
                                               epsilon=c.epsilon, lambda_l2=c.lambda_l2,
                                               lambda_cos=c.lambda_cos))
    out["gradient_alignment"] = rel(jv, values["gradient_alignment"](np.asarray(delta)))
  if "hessian_norm" in methods:
    v = jax.random.normal(key, x.shape, x.dtype)  # hessian_norm's one probe for `key`
    jv = float(regularizers.hessian_norm(fn, x, y, key=key))
    out["hessian_norm"] = rel(jv, values["hessian_norm"](np.asarray(v)))
  if "activation_sensitivity" in methods:
    c = cfgs["activation_sensitivity"]
    delta = c.epsilon * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    jv = float(regularizers.activation_sensitivity(model, x, y, layers=c.layers, key=key,
                                                   epsilon=c.epsilon, perturbation="uniform"))
    out["activation_sensitivity"] = rel(jv, values["activation_sensitivity"](np.asarray(delta)))
  if "pgd" in methods:
    c = cfgs["pgd"]
    delta = c.epsilon * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    xa = regularizers.pgd_adversary(fn, x, y, key=key, epsilon=c.epsilon,
                                    step_size=c.step_size, num_steps=c.num_steps)
    jce = float(jnp.mean(-jax.nn.log_softmax(fn(xa))[jnp.arange(x.shape[0]), y]))
    tce, txa = values["pgd"](np.asarray(delta))
    same = float(np.mean(np.abs(from_torch(tm, txa) - np.asarray(xa)) < 1e-6))
    out["pgd"] = dict(rel(jce, tce), what="CE at the PGD point",
                      fraction_of_equal_pixels=same)
  return out


# ------------------------------------------------------------------ child ----
def step_runner(model_name, shape, term, x_np, y_np, x, y, *, conv_impl="auto",
                attack_conv_impl="auto"):
  """A zero-argument call of one `TrainStep.step` (Adam 1e-3) of ``objective(term)`` on the
  zoo model ``model_name`` (softplus-3, seed 0), batch ``(x, y)``; it keeps its own state.
  Nothing is traced until the first call."""
  import jax
  import optax

  from rattr_jax import models, training
  model = models.create_model(model_name, input_shape=shape, num_classes=10,
                              activation="softplus:3", seed=0)
  terms = training.resolve_terms(objective(term), model, x_np, y_np, conv_impl=conv_impl)
  ts = training.make_train_step(model, optax.adam(1e-3), terms, conv_impl=conv_impl,
                                attack_conv_impl=attack_conv_impl)
  holder = {"state": ts.init(0)}

  def run():
    holder["state"], met = ts.step(holder["state"], x, y)
    jax.block_until_ready(met["loss"])

  return run


def child(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from rattr_jax import attribution, models, regularizers, training
  import rattr_jax  # noqa: E402
  rattr_jax.configure_cpu()  # inline CPU dispatch, as `rattr` does

  try:
    import torch
    torch.set_num_threads(2)
  except ImportError:  # pragma: no cover
    torch = None

  methods = method_configs()
  if args.methods:
    methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
  out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "models": {}}
  if args.many:
    out["many"] = many_rows(args)
  for name in (args.models.split(",") if args.models else []):
    shape = MODELS[name]
    load_start = list(os.getloadavg())
    rng = np.random.default_rng(0)
    x_np = rng.uniform(0, 1, (BATCH,) + shape).astype(np.float32)
    y_np = rng.integers(0, 10, BATCH).astype(np.int32)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    # label -> (training-pass conv, attack-loop conv, method); "auto" = the library default.
    variants = {m: ("auto", "auto", cfg) for m, cfg in methods.items()}
    if args.variants:
      for m in ("ce", "gradient_alignment"):
        if m in methods:
          variants[m + "[conv=lax]"] = ("lax", "lax", methods[m])
      if "pgd" in methods:
        variants["pgd[attack conv=lax]"] = ("auto", "lax", methods["pgd"])
    runners, compile_s = {}, {}
    out["default_conv_impls"] = list(training.default_conv_impls())
    for m in ("ce", "gradient_alignment"):
      if m not in methods or args.no_run_rows:
        continue
      for rb in (int(v) for v in args.run_batches.split(",")):
        model = models.create_model(name, input_shape=shape, num_classes=10,
                                    activation="softplus:3", seed=0)
        nsteps = 4
        xr = jnp.asarray(rng.uniform(0, 1, (rb * nsteps,) + shape).astype(np.float32))
        yr = jnp.asarray(rng.integers(0, 10, rb * nsteps).astype(np.int32))
        terms = training.resolve_terms(objective(methods[m]), model, x_np, y_np)
        ts = training.make_train_step(model, optax.adam(1e-3), terms)
        idx = jnp.arange(rb * nsteps).reshape(nsteps, rb)
        holder = {"state": ts.init(0)}

        def run_fused(ts=ts, holder=holder, xr=xr, yr=yr, idx=idx, nsteps=nsteps):
          holder["state"], met = ts.run(holder["state"], xr, yr, idx)
          jax.block_until_ready(met["loss"])
          return nsteps

        def run_single(ts=ts, holder=holder, xr=xr, yr=yr, rb=rb, nsteps=nsteps):
          for i in range(nsteps):
            holder["state"], met = ts.step(holder["state"], xr[i * rb:(i + 1) * rb],
                                           yr[i * rb:(i + 1) * rb])
          jax.block_until_ready(met["loss"])
          return nsteps

        for label, fn in ((f"{m}[run b{rb}]", run_fused), (f"{m}[step b{rb}]", run_single)):
          t0 = time.perf_counter()
          fn()
          compile_s[label] = time.perf_counter() - t0
          runners[label] = fn
    for label, (conv_impl, attack_impl, cfg) in variants.items():
      run = step_runner(name, shape, cfg, x_np, y_np, x, y, conv_impl=conv_impl,
                        attack_conv_impl=attack_impl)
      t0 = time.perf_counter()
      run()
      compile_s[label] = time.perf_counter() - t0
      runners[label] = run
    check = None
    if torch is not None and not args.no_torch:
      ref_model = models.create_model(name, input_shape=shape, num_classes=10,
                                      activation="softplus:3", seed=0)
      cfgs = method_configs()
      tm, tsteps, tvalues = torch_steps(ref_model, x_np, y_np, cfgs)
      check = peer_checks(ref_model, tm, tvalues, x, y, cfgs, methods)
      for m in TORCH_METHODS:
        if m in methods:
          runners["torch:" + m] = tsteps[m]
          tsteps[m]()  # warm-up
    times = {k: [] for k in runners}
    for _ in range(args.repeats):
      for k, run in runners.items():
        for _ in range(args.rewarm):  # untimed: the timed call follows a call of its own
          run()
        t0 = time.perf_counter()
        n = run() or 1
        times[k].append((time.perf_counter() - t0) / n)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"seconds_per_step_median": med, "seconds_all": times, "compile_seconds": compile_s,
           "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
           "cost_vs_ce": {k: med[k] / med["ce"] for k in med if not k.startswith("torch")
                          and "ce" in med and "[" not in k},
           "fused_over_single": {k.split("[")[0] + f" b{k.split(' b')[1]}": med[k] / med[
               k.replace("[run", "[step")] for k in med if "[run b" in k}}
    if check is not None:
      for m in TORCH_METHODS:
        if "torch:" + m in med and "torch:ce" in med:
          res["cost_vs_ce"]["torch:" + m] = med["torch:" + m] / med["torch:ce"]
      # torch time / rattr_jax time per repeat (paired: same round), median and range.
      res["torch_over_jax"] = {
          m: {"median": statistics.median(r), "min": min(r), "max": max(r)}
          for m in TORCH_METHODS if m in times and "torch:" + m in times
          for r in [[tt / jj for tt, jj in zip(times["torch:" + m], times[m])]]}
      res["peer_check"] = check
    out["models"][name] = res
    print(f"[{name}] " + "  ".join(f"{k} {v * 1e3:.0f}ms" for k, v in med.items()), flush=True)
  return out


# ------------------------------------------------------------------- many ----
def many_rows(args) -> dict:
  """`training.train_many`'s program (vmap over S stacked models) against S sequential runs.

  CE, Adam, batch 32, 4 fused steps (`TrainStep.run`) per call. Sequential:
  S calls of one compiled `TrainStep.run` on S states. One program: the
  vmapped run that `train_many` compiles (``jax.vmap(ts.run, in_axes=(0,
  None, None, 0))`` over stacked states and data orders). Round-robin in one
  process; speed-up = sequential time / one-program time, per repeat.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from rattr_jax import models, training

  shapes = {"mlp": (28, 28, 1), "cnn": (28, 28, 1), "lenet": (32, 32, 3)}
  rb, nsteps = 32, 4
  out = {}
  for name in args.many.split(","):
    shape = shapes[name]
    rng = np.random.default_rng(0)
    n = rb * nsteps
    xr = jnp.asarray(rng.uniform(0, 1, (n,) + shape).astype(np.float32))
    yr = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    for s_count in (int(v) for v in args.many_s.split(",")):
      model = models.create_model(name, input_shape=shape, num_classes=10,
                                  activation="softplus:3", seed=0)
      ts = training.make_train_step(model, optax.adam(1e-3), [training.cross_entropy_term()])
      orders = jnp.asarray(training.data_orders(n, seeds=range(s_count), epochs=1,
                                                batch_size=rb)[:, 0])
      seq = {"states": [ts.init(i) for i in range(s_count)]}
      vm = {"state": jax.tree_util.tree_map(lambda *a: jnp.stack(a),
                                            *[ts.init(i) for i in range(s_count)])}
      run_all = jax.jit(jax.vmap(ts.run, in_axes=(0, None, None, 0)), donate_argnums=0)

      def sequential(ts=ts, seq=seq, orders=orders):
        for i in range(len(seq["states"])):
          seq["states"][i], met = ts.run(seq["states"][i], xr, yr, orders[i])
        jax.block_until_ready(met["loss"])

      def one_program(vm=vm, orders=orders, run_all=run_all):
        vm["state"], met = run_all(vm["state"], xr, yr, orders)
        jax.block_until_ready(met["loss"])

      load0 = list(os.getloadavg())
      compile_s = {}
      for label, f in (("sequential", sequential), ("one_program", one_program)):
        t0 = time.perf_counter()
        f()
        compile_s[label] = time.perf_counter() - t0
      times = {"sequential": [], "one_program": []}
      for _ in range(args.repeats):
        for label, f in (("sequential", sequential), ("one_program", one_program)):
          t0 = time.perf_counter()
          f()
          times[label].append(time.perf_counter() - t0)
      sp = [a / b for a, b in zip(times["sequential"], times["one_program"])]
      row = {"S": s_count, "batch": rb, "steps": nsteps, "seconds_all": times,
             "first_call_seconds": compile_s,
             "speedup_median": statistics.median(sp), "speedup_min": min(sp),
             "speedup_max": max(sp), "load_average_start": load0,
             "load_average_end": list(os.getloadavg())}
      out[f"{name} S={s_count}"] = row
      print(f"[many] {name} S={s_count}: sequential {statistics.median(times['sequential']):.3f}s "
            f"one program {statistics.median(times['one_program']):.3f}s -> "
            f"{row['speedup_median']:.2f}x (load {load0[0]:.1f})", flush=True)
  return out


# ------------------------------------------------------------------ parent ---
def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--rewarm", type=int, default=1,
                 help="untimed calls of a step right before each timed call (default 1)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--models", default="cnn,lenet")
  p.add_argument("--methods", default=None)
  p.add_argument("--variants", action="store_true",
                 help="also time CE / GA with plain lax convolutions and PGD with a lax attack loop")
  p.add_argument("--no-torch", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--with-flag", action="store_true",
                 help="also time CE and gradient alignment with an XLA flag (--flag)")
  p.add_argument("--flag", default=FLAG,
                 help=f"the XLA flag of --with-flag (default {FLAG!r}, all YNN fusions off)")
  p.add_argument("--run-batches", default="32,128",
                 help="batch sizes of the fused (run) vs single (step) rows")
  p.add_argument("--no-run-rows", action="store_true", help="skip the fused vs single rows")
  p.add_argument("--no-epoch", action="store_true", help="skip the `rattr train` epoch row")
  p.add_argument("--many", default="",
                 help="models of the train_many rows (e.g. mlp,cnn,lenet; empty: none)")
  p.add_argument("--many-s", default="2,4,8", help="S values of the train_many rows")
  p.add_argument("--out", default="training_cost.json", help="file name in benchmarks/results")
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
      flags.append(args.flag)
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "on" if flag_on else "off",
           "--repeats", str(repeats), "--rewarm", str(args.rewarm), "--models", args.models,
           "--run-batches", args.run_batches, "--many", args.many,
           "--many-s", args.many_s] + (["--no-run-rows"] if args.no_run_rows else []) + extra
    print("$", " ".join(cmd), f"(XLA_FLAGS={env['XLA_FLAGS']!r})", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    sys.stdout.write("".join(l + "\n" for l in proc.stdout.splitlines()
                             if not l.startswith("RESULT")))
    if proc.returncode != 0:
      sys.stderr.write(proc.stderr[-5000:])
      raise SystemExit(proc.returncode)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])

  load_start = list(os.getloadavg())
  epoch = None if args.no_epoch else rattr_train_epoch()
  print("default `rattr train` epoch:", epoch, flush=True)
  default = run_child(False, (["--variants"] if args.variants else []) +
                      (["--methods", args.methods] if args.methods else []))
  flagged = None
  if args.with_flag:
    flagged = run_child(True, ["--methods", "ce,gradient_alignment", "--many", ""])

  from _timing import device_info, write_result
  flag_effect = {}
  if flagged is not None:
    for name in default["models"]:
      a, b = flagged["models"][name]["seconds_per_step_median"], default["models"][name][
          "seconds_per_step_median"]
      flag_effect[name] = {f"flag_speedup_{k}": b[k] / a[k] for k in a if k in b}
  result = {
      "benchmark": "training_cost",
      "settings": {"quick": args.quick, "repeats": repeats, "rewarm": args.rewarm,
                   "batch": BATCH,
                   "run_batches": args.run_batches,
                   "activation": "softplus:3", "optimizer": "adam 1e-3",
                   "methods": {k: v.to_dict() for k, v in method_configs().items()},
                   "models": MODELS, "inputs": "uniform [0, 1], random labels",
                   "xla_flag_compared": args.flag if args.with_flag else None,
                   "note": "each setting in its own process; round-robin within a process; "
                           "machine shared with other jobs (see load averages)"},
      "device": device_info(torch_threads=2, load_average_start=load_start,
                            load_average_end=list(os.getloadavg())),
      "rattr_train_epoch": epoch,
      "default": default,
      "flag_on": flagged,
      "flag_effect": flag_effect,
  }
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", args.out)
  write_result(path, result)
  for name, r in default["models"].items():
    print(name, "cost vs CE:", {k: round(v, 2) for k, v in r["cost_vs_ce"].items()})
    print(name, "fused / single step:", {k: round(v, 2) for k, v in r["fused_over_single"].items()})
    if "torch_over_jax" in r:
      print(name, "torch / JAX time (> 1: rattr_jax faster):",
            {k: round(v["median"], 2) for k, v in r["torch_over_jax"].items()})
  if flag_effect:
    print("flag effect (> 1: the flag helps):", flag_effect)


def rattr_train_epoch(max_train: int = 2048, epochs: int = 2) -> dict:
  """Seconds per epoch of the default ``rattr train`` (fast_cpu preset), run as a user runs it."""
  import tempfile
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  with tempfile.TemporaryDirectory() as out:
    cmd = [sys.executable, "-m", "rattr_jax.cli", "train", "--out", out, "--epochs", str(epochs),
           "--max-train", str(max_train), "--no-progress"]
    load = list(os.getloadavg())
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
      sys.stderr.write(proc.stderr[-3000:])
      raise SystemExit(proc.returncode)
    with open(os.path.join(out, "log.json")) as f:
      log = json.load(f)
  hist = log["epochs"]
  secs = [float(h["seconds"]) for h in hist]
  return {"command": " ".join(cmd[1:]), "epoch_seconds": secs, "steady_epoch_seconds": secs[-1],
          "wall_seconds": wall, "load_average": load, "xla_flags": env.get("XLA_FLAGS", "")}


if __name__ == "__main__":
  main()
