"""Throughput of the jitted top-k explanation attack vs its floor and PyTorch eager.

Measures, on the MNIST CNN (ReLU model, softplus-10 surrogate, gradient maps,
top-k objective with k = 50, 100 signed steps):
  * rattr_jax `topk_attack` (one compiled `lax.scan`), batch 16 and 64;
  * the floor: ONE jitted gradient of the objective (the double backward through
    the surrogate) at the same batch, times the number of steps;
  * the step floor: ONE jitted call of what every step of the loop (and of the
    PyTorch loop) must compute, that gradient and the real model's label check
    (a forward pass of the ReLU model), times the number of steps;
  * a plain PyTorch eager implementation of the same attack on the same
    weights (written here), in the same run, round-robin.
Also an MLP (64-128-128-10 on 8x8 digits, batch 1 and 16) and the IG attack
(20 path points, batch 16). Image-steps per second = batch * steps / time.

Usage: python benchmarks/attack_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from _timing import device_info, medians, round_robin, write_result
from rattr_jax import attacks, models
import rattr_jax  # noqa: E402
rattr_jax.configure_cpu()  # inline CPU dispatch, as `rattr` does
from rattr_jax.attacks import _objectives as O
from rattr_jax.attribution import gradient, integrated_gradients
from rattr_jax.core import target_gradient

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # pragma: no cover
  torch = None

K = 50


# ------------------------------------------------------------------ JAX ----
def jax_attack(fn, sur, explain, x, t, num_steps, k):
  cfg = attacks.AttackConfig(num_steps=num_steps, k=k)
  key = jax.random.key(0)

  def run():
    return attacks.topk_attack(fn, explain, x, t, key=key, config=cfg, surrogate=sur).x_adv
  return run


def jax_floor(fn, sur, x, t, k, num_steps, reduce="abs_sum"):
  ref = O.to_map(target_gradient(fn, x, t), reduce, "sum_to_one")
  mask = O.topk_mask(ref, k)

  @jax.jit
  def one(z):
    return jax.grad(lambda zz: jnp.sum(O.topk_objective(
        O.to_map(target_gradient(sur, zz, t), reduce, "sum_to_one"), mask)))(z)
  return lambda: one(x), num_steps


def jax_step_floor(fn, sur, x, t, k, reduce="abs_sum"):
  """One jitted call of a step's work: the objective's gradient and the label check."""
  ref = O.to_map(target_gradient(fn, x, t), reduce, "sum_to_one")
  mask = O.topk_mask(ref, k)

  @jax.jit
  def one(z):
    g = jax.grad(lambda zz: jnp.sum(O.topk_objective(
        O.to_map(target_gradient(sur, zz, t), reduce, "sum_to_one"), mask)))(z)
    return g, jnp.argmax(fn(z), -1) == t
  return lambda: one(x)


# ---------------------------------------------------------------- torch ----
def torch_cnn(model):
  p = {n: np.asarray(v) for n, v in [
      ("c1w", model.conv1.kernel[...]), ("c1b", model.conv1.bias[...]),
      ("c2w", model.conv2.kernel[...]), ("c2b", model.conv2.bias[...]),
      ("f1w", model.fc1.kernel[...]), ("f1b", model.fc1.bias[...]),
      ("f2w", model.fc2.kernel[...]), ("f2b", model.fc2.bias[...])]}
  w = {k: torch.tensor(v.transpose(3, 2, 0, 1).copy() if v.ndim == 4 else v.copy())
       for k, v in p.items()}

  def fwd(x_nhwc, act):
    h = x_nhwc.permute(0, 3, 1, 2)
    h = F.max_pool2d(act(F.conv2d(h, w["c1w"], w["c1b"], padding=2)), 2)
    h = F.max_pool2d(act(F.conv2d(h, w["c2w"], w["c2b"], padding=2)), 2)
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # NHWC flatten order, as in JAX
    h = act(h @ w["f1w"] + w["f1b"])
    return h @ w["f2w"] + w["f2b"]
  return fwd


def torch_mlp(model):
  ws = [(torch.tensor(np.asarray(l.kernel[...])), torch.tensor(np.asarray(l.bias[...])))
        for l in list(model.hidden) + [model.head]]

  def fwd(x, act):
    h = x.reshape(x.shape[0], -1)
    for i, (a, b) in enumerate(ws):
      h = h @ a + b
      if i < len(ws) - 1:
        h = act(h)
    return h
  return fwd


def torch_topk_attack(fwd, x_np, t_np, *, num_steps, k, eps=8 / 255, alpha=0.5 / 255,
                      beta=10.0, ig_steps=None):
  """Plain eager PyTorch: the same loop, objective and best-iterate tracking."""
  relu = F.relu
  soft = lambda z: F.softplus(z, beta=beta)
  x = torch.tensor(x_np)
  t = torch.tensor(t_np, dtype=torch.long)
  image = x.ndim == 4
  if ig_steps:
    alphas = torch.linspace(0, 1, ig_steps)
    wts = torch.full((ig_steps,), 1.0 / (ig_steps - 1))
    wts[0] = wts[-1] = 0.5 / (ig_steps - 1)

  def attribution(z, act, create_graph):
    if not ig_steps:
      out = fwd(z, act)
      sel = out.gather(1, t[:, None]).sum()
      return torch.autograd.grad(sel, z, create_graph=create_graph)[0]
    pts = (alphas.view(-1, *[1] * z.ndim) * z[None]).reshape(-1, *z.shape[1:])
    out = fwd(pts, act)
    sel = out.gather(1, t.repeat(ig_steps)[:, None]).sum()
    g = torch.autograd.grad(sel, pts, create_graph=create_graph)[0]
    g = g.reshape(ig_steps, *z.shape)
    return z * torch.tensordot(wts, g, dims=1)

  def to_map(a):
    m = a.abs().sum(-1) if image else a.abs()
    return m / (m.reshape(m.shape[0], -1).sum(1).view(-1, *[1] * (m.ndim - 1)) + 1e-12)

  z0 = x.clone().requires_grad_(True)
  ref = to_map(attribution(z0, relu, False)).detach().reshape(x.shape[0], -1)
  mask = torch.zeros_like(ref).scatter_(1, ref.topk(k, dim=1).indices, 1.0)
  with torch.no_grad():
    label = fwd(x, relu).argmax(1)
  z = x.clone()
  best_x, best = x.clone(), torch.full((x.shape[0],), -float("inf"))
  shape = (-1,) + (1,) * (x.ndim - 1)
  for _ in range(num_steps):
    z = z.detach().requires_grad_(True)
    m = to_map(attribution(z, soft, True)).reshape(x.shape[0], -1)
    d = -(m * mask).sum(1)
    g = torch.autograd.grad(d.sum(), z)[0]
    with torch.no_grad():
      ok = fwd(z, relu).argmax(1) == label
      better = ok & (d > best)
      best = torch.where(better, d, best)
      best_x = torch.where(better.view(shape), z, best_x)
      z = x + (z + alpha * g.sign() - x).clamp(-eps, eps)
      z = z.clamp(0, 1)
  return best_x


# --------------------------------------------------------------- timing ----
def bench_case(name, cases, repeats, sync_map):
  """Round-robin timing of ``cases`` (name -> callable), after one warm-up each."""
  times, _ = round_robin(cases, repeats, sync=sync_map)
  return medians(times), times


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke run)")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "attack_throughput.json"))
  ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; quick 2)")
  args = ap.parse_args()
  repeats = args.repeats or (2 if args.quick else 5)
  num_steps = 100
  if torch is not None:
    torch.set_num_threads(2)
  jsync = lambda a: jax.block_until_ready(a)
  tsync = lambda a: a
  results = []

  def record(case, batch, steps, med, raw):
    row = {"case": case, "batch": batch, "num_steps": steps,
           "seconds_median": {k: v for k, v in med.items()},
           "image_steps_per_s": {k: batch * steps / v for k, v in med.items()},
           "raw_seconds": raw}
    if "torch_eager" in med:
      row["speedup_vs_torch"] = med["torch_eager"] / med["rattr_jax"]
      if "rattr_jax_one_chunk" in med:
        row["speedup_vs_torch_one_chunk"] = med["torch_eager"] / med["rattr_jax_one_chunk"]
    if "floor" in med:
      row["loop_over_floor"] = med["rattr_jax"] / med["floor"]
    if "step_floor" in med:
      row["loop_over_step_floor"] = med["rattr_jax"] / med["step_floor"]
    results.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "raw_seconds"}), flush=True)

  # ---- CNN, gradient maps ----
  cnn = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=0)
  fn, sur = models.as_fn(cnn), models.surrogate_fn(cnn, beta=10.0)
  rng = np.random.default_rng(0)
  for batch in (16, 64):
    x_np = rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32)
    x = jnp.asarray(x_np)
    t = jnp.argmax(fn(x), -1)
    floor_one, _ = jax_floor(fn, sur, x, t, K, num_steps)
    step_one = jax_step_floor(fn, sur, x, t, K)
    cases = {"rattr_jax": jax_attack(fn, sur, gradient, x, t, num_steps, K),
             "floor": lambda: [floor_one() for _ in range(num_steps)][-1],
             "step_floor": lambda: [step_one() for _ in range(num_steps)][-1]}
    sync = {"rattr_jax": jsync, "floor": jsync, "step_floor": jsync}
    if torch is not None:
      tf = torch_cnn(cnn)
      np.testing.assert_allclose(tf(torch.tensor(x_np), F.relu).numpy(), np.asarray(fn(x)),
                                 rtol=1e-4, atol=1e-4)
      cases["torch_eager"] = functools.partial(torch_topk_attack, tf, x_np, np.asarray(t),
                                               num_steps=num_steps, k=K)
      sync["torch_eager"] = tsync
    med, raw = bench_case("cnn", cases, repeats, sync)
    record("cnn_gradient_topk", batch, num_steps, med, raw)

  # ---- MLP on 8x8 digits ----
  mlp = models.create_model("mlp", input_shape=(64,), num_classes=10, seed=0)
  fn_m, sur_m = models.as_fn(mlp), models.surrogate_fn(mlp, beta=10.0)
  for batch in (1, 16):
    x_np = rng.uniform(0, 1, (batch, 64)).astype(np.float32)
    x = jnp.asarray(x_np)
    t = jnp.argmax(fn_m(x), -1)
    floor_one, _ = jax_floor(fn_m, sur_m, x, t, 8, num_steps)
    cases = {"rattr_jax": jax_attack(fn_m, sur_m, gradient, x, t, num_steps, 8),
             "floor": lambda: [floor_one() for _ in range(num_steps)][-1]}
    sync = {"rattr_jax": jsync, "floor": jsync}
    if torch is not None:
      cases["torch_eager"] = functools.partial(torch_topk_attack, torch_mlp(mlp), x_np,
                                               np.asarray(t), num_steps=num_steps, k=8)
      sync["torch_eager"] = tsync
    med, raw = bench_case("mlp", cases, repeats, sync)
    record("mlp_gradient_topk", batch, num_steps, med, raw)

  # ---- IG attack, 20 path points (trapezoid), CNN batch 16 ----
  ig_attack_steps = 10 if args.quick else 20
  batch = 16
  x_np = rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32)
  x = jnp.asarray(x_np)
  t = jnp.argmax(fn(x), -1)
  # Two memory settings: path points in chunks of 10 (every chunk rematerialised,
  # memory bounded for any number of path points) and in one chunk of 20 (no
  # remat: faster, memory grows with the points).
  ig = functools.partial(integrated_gradients, num_steps=20, chunk_size=10)
  ig_one = functools.partial(integrated_gradients, num_steps=20, chunk_size=20)
  cases = {"rattr_jax": jax_attack(fn, sur, ig, x, t, ig_attack_steps, K),
           "rattr_jax_one_chunk": jax_attack(fn, sur, ig_one, x, t, ig_attack_steps, K)}
  sync = {"rattr_jax": jsync, "rattr_jax_one_chunk": jsync}
  if torch is not None:
    cases["torch_eager"] = functools.partial(torch_topk_attack, torch_cnn(cnn), x_np,
                                             np.asarray(t), num_steps=ig_attack_steps, k=K,
                                             ig_steps=20)
    sync["torch_eager"] = tsync
  med, raw = bench_case("ig", cases, max(1, repeats - 1), sync)
  record("cnn_ig20_topk", batch, ig_attack_steps, med, raw)

  payload = {
      "benchmark": "attack_throughput",
      "settings": {"quick": args.quick, "repeats": repeats, "k": K, "epsilon": "8/255",
                   "step_size": "0.5/255", "surrogate_beta": 10.0,
                   "weights": "random init (seed 0), identical in JAX and torch",
                   "inputs": "uniform [0, 1]",
                   "ig": "20 trapezoid points; chunk_size 10 (2 rematerialised chunks) and "
                         "20 (one chunk, no remat)",
                   "note": "round-robin in one process, ratios paired within the run; "
                           "device.load_average shows whether the machine was shared"},
      "device": device_info(),
      "results": results,
  }
  write_result(args.out, payload)


if __name__ == "__main__":
  main()
