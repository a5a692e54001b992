"""Cost of curvature computations: HVP / gradient, Lanczos in HVP units, torch.func peer.

For the MNIST CNN (28x28x1) and the CIFAR LeNet (32x32x3), softplus-10
activations, batch 16, float32 on CPU, this measures round-robin in one
process:

* the gradient of the target logit (``rattr_jax.attribution.gradient`` core);
* the input HVP in each mode: forward-over-reverse (``conv_impl="lax"``, since
  the fast convolution has no forward mode) and reverse-over-reverse (with the
  default fast convolution and with ``lax``);
* ``hessian_eigs`` top-5 at 20 Lanczos iterations, in units of one HVP of the
  same mode;
* if torch is installed: the same HVP with ``torch.func.jvp(torch.func.grad)``
  (forward-over-reverse) and with double backward, on a torch copy of the same
  weights, and its ratio to the best JAX HVP.

The jitted cores are timed (argument validation, a few ms per call, is
reported separately as ``hvp_public``). Usage::

  python benchmarks/curvature_cost.py [--quick] [--repeats N]

Writes ``benchmarks/results/curvature_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rattr_jax import curvature, models  # noqa: E402
import rattr_jax  # noqa: E402
rattr_jax.configure_cpu()  # inline CPU dispatch, as `rattr` does
from rattr_jax.attribution import _gradient  # noqa: E402
from rattr_jax.curvature import _hvp, _spectrum  # noqa: E402
from _timing import device_info  # noqa: E402

BATCH = 16
BETA = 10.0
MODEL_SHAPES = {"cnn": (28, 28, 1), "lenet": (32, 32, 3)}


def _block(out):
  jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, out)
  return out


# ----------------------------------------------------------------------------
# torch peer.

def torch_model(name, model):
  import torch
  import torch.nn.functional as F

  def conv_w(layer):
    return torch.tensor(np.asarray(layer.kernel[...]).transpose(3, 2, 0, 1).copy())

  def lin_w(layer):
    return torch.tensor(np.asarray(layer.kernel[...]).T.copy())

  def b(layer):
    return torch.tensor(np.asarray(layer.bias[...]).copy())

  act = lambda z: F.softplus(z, beta=BETA, threshold=1e6)  # noqa: E731
  if name == "cnn":
    c1, c2 = (conv_w(model.conv1), b(model.conv1)), (conv_w(model.conv2), b(model.conv2))
    f1, f2 = (lin_w(model.fc1), b(model.fc1)), (lin_w(model.fc2), b(model.fc2))

    def fwd(x):  # x NHWC
      h = x.permute(0, 3, 1, 2)
      h = F.max_pool2d(act(F.conv2d(h, *c1, padding=2)), 2)
      h = F.max_pool2d(act(F.conv2d(h, *c2, padding=2)), 2)
      h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
      return F.linear(act(F.linear(h, *f1)), *f2)
    return fwd
  convs = [(conv_w(c), b(c)) for c in (model.conv1, model.conv2, model.conv3, model.conv4)]
  f1, f2 = (lin_w(model.fc1), b(model.fc1)), (lin_w(model.fc2), b(model.fc2))

  def fwd(x):
    h = x.permute(0, 3, 1, 2)
    h = act(F.conv2d(act(F.conv2d(h, *convs[0], padding=1)), *convs[1], padding=1))
    h = F.max_pool2d(h, 2)
    h = act(F.conv2d(act(F.conv2d(h, *convs[2], padding=1)), *convs[3], padding=1))
    h = F.max_pool2d(h, 2)
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
    return F.linear(act(F.linear(h, *f1)), *f2)
  return fwd


def torch_variants(name, model, x, t, v):
  try:
    import torch
    from torch.func import grad, jvp
  except ImportError:
    return {}, None, None
  torch.set_num_threads(2)
  fwd = torch_model(name, model)
  xt = torch.tensor(np.asarray(x))
  vt = torch.tensor(np.asarray(v))
  tt = torch.tensor(np.asarray(t), dtype=torch.long)
  idx = torch.arange(xt.shape[0])

  def s(z):
    return fwd(z)[idx, tt].sum()

  def t_grad():
    return grad(s)(xt)

  def t_hvp_fwd():
    return jvp(grad(s), (xt,), (vt,))[1]

  def t_hvp_double_backward():
    z = xt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(s(z), z, create_graph=True)
    (hv,) = torch.autograd.grad((g * vt).sum(), z)
    return hv

  variants = {"torch_grad": t_grad, "torch_hvp_fwd_over_rev": t_hvp_fwd,
              "torch_hvp_double_backward": t_hvp_double_backward}
  return variants, t_hvp_fwd().numpy(), torch.__version__


# ----------------------------------------------------------------------------


def jax_variants(name, x, t, v, key):
  model = models.create_model(name, input_shape=MODEL_SHAPES[name], num_classes=10,
                              activation=f"softplus:{BETA}", seed=0)
  fast = models.as_fn(model)                       # default: custom_vjp fast conv on CPU
  lax_ = models.as_fn(model, conv_impl="lax")
  fw, rv = _hvp.FORWARD, _hvp.REVERSE
  k, iters = 5, 20
  var = {
      "grad_fast": lambda: _gradient._gradient(fast, x, t),
      "grad_lax": lambda: _gradient._gradient(lax_, x, t),
      "hvp_fwd_over_rev_lax": lambda: _hvp._hvp(lax_, x, t, v, "logit", fw),
      "hvp_rev_over_rev_fast": lambda: _hvp._hvp(fast, x, t, v, "logit", rv),
      "hvp_rev_over_rev_lax": lambda: _hvp._hvp(lax_, x, t, v, "logit", rv),
      "lanczos_fwd_over_rev_lax": lambda: _spectrum._hessian_eigs(lax_, x, t, key, k, iters,
                                                                  "logit", fw),
      "lanczos_rev_over_rev_fast": lambda: _spectrum._hessian_eigs(fast, x, t, key, k, iters,
                                                                   "logit", rv),
      "hvp_public_auto_fast": lambda: curvature.hvp(fast, x, t, v),
  }
  ref = np.asarray(_hvp._hvp(lax_, x, t, v, "logit", fw))
  return model, var, ref


def run(args):
  key = jax.random.key(0)
  results = {}
  for name in ("cnn", "lenet"):
    kx, kv = jax.random.split(jax.random.fold_in(key, hash(name) % 1000))
    x = jax.random.uniform(kx, (BATCH,) + MODEL_SHAPES[name], jnp.float32)
    v = jax.random.normal(kv, x.shape, jnp.float32)
    t = jnp.arange(BATCH, dtype=jnp.int32) % 10
    model, var, ref = jax_variants(name, x, t, v, key)
    tvar, tref, _ = torch_variants(name, model, x, t, v)
    names = list(var) + list(tvar)
    fns = {**{n: (lambda f=f: _block(f())) for n, f in var.items()}, **tvar}
    for n in names:  # compile / warm up
      fns[n]()
      fns[n]()
    times = {n: [] for n in names}
    for _ in range(args.repeats):
      for n in names:
        t0 = time.perf_counter()
        fns[n]()
        times[n].append(time.perf_counter() - t0)
    med = {n: 1e3 * statistics.median(ts) for n, ts in times.items()}
    best_hvp = min(med["hvp_fwd_over_rev_lax"], med["hvp_rev_over_rev_fast"])
    r = {
        "median_ms": med,
        "ratios": {
            "hvp_fwd_over_rev_lax / grad_lax": med["hvp_fwd_over_rev_lax"] / med["grad_lax"],
            "hvp_rev_over_rev_fast / grad_fast": med["hvp_rev_over_rev_fast"] / med["grad_fast"],
            "hvp_rev_over_rev_lax / grad_lax": med["hvp_rev_over_rev_lax"] / med["grad_lax"],
            "best_hvp / best_grad": best_hvp / min(med["grad_fast"], med["grad_lax"]),
            "lanczos_fwd_over_rev_lax / hvp_fwd_over_rev_lax (HVP units, 20 iters)":
                med["lanczos_fwd_over_rev_lax"] / med["hvp_fwd_over_rev_lax"],
            "lanczos_rev_over_rev_fast / hvp_rev_over_rev_fast (HVP units, 20 iters)":
                med["lanczos_rev_over_rev_fast"] / med["hvp_rev_over_rev_fast"],
        },
    }
    if tvar:
      r["ratios"]["torch_hvp_fwd_over_rev / torch_grad"] = (
          med["torch_hvp_fwd_over_rev"] / med["torch_grad"])
      r["ratios"]["torch_hvp_fwd_over_rev / best_jax_hvp"] = med["torch_hvp_fwd_over_rev"] / best_hvp
      r["ratios"]["torch_hvp_double_backward / best_jax_hvp"] = (
          med["torch_hvp_double_backward"] / best_hvp)
      r["max_abs_diff_torch_vs_jax_hvp"] = float(np.max(np.abs(tref - ref)))
      r["max_abs_jax_hvp"] = float(np.max(np.abs(ref)))
    results[name] = r
    print(name, json.dumps(r, indent=1))
  return results


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--out", default=str(Path(__file__).parent / "results" / "curvature_cost.json"))
  args = p.parse_args()
  if args.repeats is None:
    args.repeats = 3 if args.quick else 15
  results = run(args)
  out = {
      "benchmark": "curvature_cost",
      "settings": {"batch": BATCH, "activation": f"softplus:{BETA}", "dtype": "float32",
                   "lanczos": {"k": 5, "num_iters": 20}, "repeats": args.repeats,
                   "quick": args.quick, "timing": "round-robin, median of repeats, jitted cores",
                   "weights": "random init (seed 0); timings do not depend on training"},
      "device": device_info(processor=platform.processor()),
      "results": results,
  }
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(out, indent=2))
  print("wrote", args.out)


if __name__ == "__main__":
  main()
