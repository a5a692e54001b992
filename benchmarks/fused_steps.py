"""Fused training steps (`TrainStep.run`, a `lax.scan` over steps) against single ones.

`rattr_jax.training.train` runs its steps fused, several per compiled call. On
XLA:CPU a convolution differentiated inside a loop body can fall off the fast
path (README "Speed"), so a fused step may cost more than a single
`TrainStep.step`. This script times both, per step, before and after a change
(a switch in `rattr_jax.models._conv` or `rattr_jax.models._activation`, read
when a program is traced):

* the MNIST CNN and the CIFAR LeNet, CE and gradient alignment, with and without
  the few-channel convolution of their input layers (``_conv.FEW_CHANNELS`` 4 / 0);
* ResNet-18 (quarter width), CE, with and without the rewrite of strided
  convolutions as stride-1 ones (``_conv.STRIDED_AS_STRIDE_1``);
* the MNIST CNN and the CIFAR LeNet at batch 128 (as ``training_cost.py``), the
  softplus with a sigmoid derivative against ``jax.nn.softplus``
  (``_activation.FAST_SOFTPLUS``), CE, gradient alignment, Hessian norm, PGD-AT;
* the same two at batch 128, CE and gradient alignment, the weight gradient
  without output-channel blocks on Eigen convolutions
  (``_conv.WEIGHT_GRAD_OUT_CHUNK`` ``"auto"``) against blocks of 16;
* the same two at batch 128, the four softplus methods, float32 softplus with the
  series ``log1p`` (``_activation.LOG1P_SERIES``) against ``jnp.log1p``;
* the same two at batch 128, the input layer's forward with output columns folded
  into channels (``_conv.FEW_CHANNEL_FORWARD_BLOCK`` 4) against im2col / ``lax``
  (0), the four softplus methods;
* the same two at batch 128, the max-pool's windows before the channels
  (``_layers.WINDOW_AXIS`` -2) against after them (-1), the four softplus methods;
* the same two at batch 128, the max-pool's undifferentiated value as four corner
  views compared elementwise (``_layers.POOL_FORWARD`` ``"pairs"``) against ``max``
  over a window axis (``"windows"``): the model's forward (method ``forward``:
  logits only, no training step; "fused" is a `lax.map` over the batches) and CE
  (which never evaluates the undifferentiated value: a control);
* the same two at batch 128, the fast convolution as a primitive with its own
  transposes (``_conv.AD_RULES`` ``"primitive"``) against a ``jax.custom_vjp``
  (``"custom_vjp"``), the four softplus methods and activation sensitivity (the
  Hessian-norm term's HVP mode is probed with the switch set: forward-over-reverse
  with the primitive, reverse-over-reverse with the custom VJP).
* the same two at batch 128, the max-pool derivative rule's value from its argmax's own
  reduction (``_layers.POOL_VALUE`` ``"reduce"``) against a select-sum (``"select"``),
  the four softplus methods and activation sensitivity;
* the same two at batch 128, the random input-shaped draws of gradient
  alignment, Hessian norm, activation sensitivity and PGD-AT made as ``[B, rest]``
  matrices (``_random.MATRIX_DRAWS``; the same values) against their own shape;
* the same two at batch 128, oneDNN convolutions (``_conv.ONEDNN``) on and off.

Every variant is compiled first, then timed round-robin (paired per repeat).

  python benchmarks/fused_steps.py            # writes benchmarks/results/fused_steps.json
  python benchmarks/fused_steps.py --cases cnn_softplus,lenet_softplus --out ...
  python benchmarks/fused_steps.py --quick    # 2 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rattr_jax  # noqa: E402

rattr_jax.configure_cpu()
from _timing import device_info, medians, round_robin, write_result  # noqa: E402

from rattr_jax import models, training  # noqa: E402
from rattr_jax import _random  # noqa: E402  (a before/after switch)
from rattr_jax.models import _activation, _conv, _layers  # noqa: E402  (the before/after switches)
from rattr_jax.regularizers import _hessian_norm  # noqa: E402

SWITCH_MODULES = {"_conv": _conv, "_activation": _activation, "_layers": _layers,
                   "_random": _random}
_SOFTPLUS_METHODS = ("ce", "gradient_alignment", "hessian_norm", "pgd")
#: The methods that draw a random input-shaped array every step.
_RANDOM_METHODS = ("gradient_alignment", "hessian_norm", "activation_sensitivity", "pgd")

#: name -> (zoo model, input shape, widths, batch, methods, the switch (module, name) and
#: its (after, before) values)
CASES = {
    "cnn": ("cnn", (28, 28, 1), None, 32, ("ce", "gradient_alignment"),
            ("_conv", "FEW_CHANNELS"), (4, 0)),
    "lenet": ("lenet", (32, 32, 3), None, 32, ("ce", "gradient_alignment"),
              ("_conv", "FEW_CHANNELS"), (4, 0)),
    "resnet18_quarter": ("resnet18", (32, 32, 3), (16, 32, 64, 128), 64, ("ce",),
                         ("_conv", "STRIDED_AS_STRIDE_1"), (True, False)),
    "cnn_softplus": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS,
                     ("_activation", "FAST_SOFTPLUS"), (True, False)),
    "lenet_softplus": ("lenet", (32, 32, 3), None, 128, _SOFTPLUS_METHODS,
                       ("_activation", "FAST_SOFTPLUS"), (True, False)),
    "cnn_wgrad": ("cnn", (28, 28, 1), None, 128, ("ce", "gradient_alignment"),
                  ("_conv", "WEIGHT_GRAD_OUT_CHUNK"), ("auto", 16)),
    "lenet_wgrad": ("lenet", (32, 32, 3), None, 128, ("ce", "gradient_alignment"),
                    ("_conv", "WEIGHT_GRAD_OUT_CHUNK"), ("auto", 16)),
    "cnn_log1p": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS,
                  ("_activation", "LOG1P_SERIES"), (True, False)),
    "lenet_log1p": ("lenet", (32, 32, 3), None, 128, _SOFTPLUS_METHODS,
                    ("_activation", "LOG1P_SERIES"), (True, False)),
    "cnn_colblock": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS,
                     ("_conv", "FEW_CHANNEL_FORWARD_BLOCK"), (4, 0)),
    "lenet_colblock": ("lenet", (32, 32, 3), None, 128, _SOFTPLUS_METHODS,
                       ("_conv", "FEW_CHANNEL_FORWARD_BLOCK"), (4, 0)),
    "cnn_pool": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS,
                 ("_layers", "WINDOW_AXIS"), (-2, -1)),
    "lenet_pool": ("lenet", (32, 32, 3), None, 128, _SOFTPLUS_METHODS,
                   ("_layers", "WINDOW_AXIS"), (-2, -1)),
    "cnn_pool_select": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS,
                        ("_layers", "POOL_VALUE"), ("select", "gather")),
    "lenet_pool_select": ("lenet", (32, 32, 3), None, 128, _SOFTPLUS_METHODS,
                          ("_layers", "POOL_VALUE"), ("select", "gather")),
    "cnn_pool_reduce": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS + ("activation_sensitivity",),
                        ("_layers", "POOL_VALUE"), ("reduce", "select")),
    "lenet_pool_reduce": ("lenet", (32, 32, 3), None, 128,
                          _SOFTPLUS_METHODS + ("activation_sensitivity",),
                          ("_layers", "POOL_VALUE"), ("reduce", "select")),
    "cnn_ad_rules": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS + ("activation_sensitivity",),
                     ("_conv", "AD_RULES"), ("primitive", "custom_vjp")),
    "lenet_ad_rules": ("lenet", (32, 32, 3), None, 128,
                       _SOFTPLUS_METHODS + ("activation_sensitivity",),
                       ("_conv", "AD_RULES"), ("primitive", "custom_vjp")),
    "cnn_pool_forward": ("cnn", (28, 28, 1), None, 128, ("forward", "ce"),
                         ("_layers", "POOL_FORWARD"), ("pairs", "windows")),
    "lenet_pool_forward": ("lenet", (32, 32, 3), None, 128, ("forward", "ce"),
                           ("_layers", "POOL_FORWARD"), ("pairs", "windows")),
    "cnn_random": ("cnn", (28, 28, 1), None, 128, _RANDOM_METHODS,
                   ("_random", "MATRIX_DRAWS"), (True, False)),
    "lenet_random": ("lenet", (32, 32, 3), None, 128, _RANDOM_METHODS,
                     ("_random", "MATRIX_DRAWS"), (True, False)),
    "cnn_onednn": ("cnn", (28, 28, 1), None, 128, _SOFTPLUS_METHODS + ("activation_sensitivity",),
                   ("_conv", "ONEDNN"), (True, False)),
    "lenet_onednn": ("lenet", (32, 32, 3), None, 128,
                     _SOFTPLUS_METHODS + ("activation_sensitivity",),
                     ("_conv", "ONEDNN"), (True, False)),
}


@contextlib.contextmanager
def switched(switch, value):
  """``<module>.<name> = value`` inside the block (the switches are read when a program is traced)."""
  module, attr = SWITCH_MODULES[switch[0]], switch[1]
  old = getattr(module, attr)
  setattr(module, attr, value)
  _hessian_norm._MODE_CACHE.clear()  # the HVP mode probe's answer may depend on the switch
  try:
    yield
  finally:
    setattr(module, attr, old)
    _hessian_norm._MODE_CACHE.clear()


def _first_calls(switch, value, first_step, first_run):
  """Seconds of the first (tracing + compiling) call of ``first_step`` and ``first_run``,
  both made with ``<module>.<name> = value``."""
  with switched(switch, value):
    seconds = {}
    for key, call in (("first_step_s", first_step), ("first_run_s", first_run)):
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      seconds[key] = time.perf_counter() - t0
    return seconds


def _forward_variant(m, x, batch, steps, switch, value):
  """The model's undifferentiated forward (logits) per batch: jitted per batch, and `lax.map`-ped."""
  fn = models.as_fn(m)
  one = jax.jit(fn)
  many = jax.jit(lambda xs: jax.lax.map(fn, xs))
  xs = x.reshape(steps, batch, *x.shape[1:])

  def single():
    return [one(xs[i]) for i in range(steps)]

  def fused():
    return many(xs)

  return single, fused, _first_calls(switch, value, lambda: one(x[:batch]), fused)


def _variant(model_name, shape, widths, batch, steps, method, switch, value):
  """Compiled single and fused step callables for one model (traced with ``<module>.<name> = value``)."""
  m = models.create_model(model_name, input_shape=shape, num_classes=10, widths=widths,
                          activation="softplus:3")
  rng = np.random.default_rng(0)
  x = rng.random((steps * batch, *shape), dtype=np.float32)
  y = rng.integers(0, 10, steps * batch).astype(np.int32)
  idx = np.arange(steps * batch, dtype=np.int32).reshape(steps, batch)
  if method == "forward":
    return _forward_variant(m, x, batch, steps, switch, value)
  with switched(switch, value):  # terms may probe the model (e.g. the HVP mode)
    terms = training.resolve_terms(training.method_terms(method), m, x, y)
  ts = training.make_train_step(m, optax.adam(1e-3), terms)
  box = {"state": ts.init(0)}

  def first_step():
    box["state"], *_ = ts.step(box["state"], x[:batch], y[:batch])
    return box["state"]

  def first_run():
    box["state"], *_ = ts.run(box["state"], x, y, idx)
    return box["state"]

  first = _first_calls(switch, value, first_step, first_run)

  def single():
    for i in range(steps):
      box["state"], *_ = ts.step(box["state"], x[i * batch:(i + 1) * batch],
                                 y[i * batch:(i + 1) * batch])
    return box["state"]

  return single, first_run, first


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--cases", default=",".join(CASES))
  p.add_argument("--batch", type=int, default=None, help="batch size (default: per case)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                               "fused_steps.json"))
  args = p.parse_args()
  repeats = 2 if args.quick else args.repeats
  load_start = list(os.getloadavg())
  rows = []
  for case in args.cases.split(","):
    name, shape, widths, batch, methods, switch, values = CASES[case]
    batch = args.batch or batch
    for method in methods:
      fns, firsts = {}, {}
      for value, tag in zip(values, ("", "_before")):
        single, fused, first = _variant(name, shape, widths, batch, args.steps, method,
                                        switch, value)
        fns[f"single{tag}"], fns[f"fused{tag}"] = single, fused
        firsts[f"{switch[1]}={value}"] = first
      times, _ = round_robin(fns, repeats, warmup=1)
      med = {k: v / args.steps for k, v in medians(times).items()}
      row = {"case": case, "model": name, "widths": widths, "batch": batch,
             "steps": args.steps, "method": method,
             "switch": {"name": f"rattr_jax.models.{switch[0]}.{switch[1]}", "after": values[0],
                        "before": values[1]},
             "median_s_per_step": med, "all_s": times, "first_call_s": firsts,
             "load_average": list(os.getloadavg())}
      for k in med:
        if k.startswith("fused"):
          row[f"{k}_over_single"] = med[k] / med[k.replace("fused", "single")]
      for k in ("single", "fused"):
        # paired per repeat: before / after (> 1: the change made it faster)
        r = np.asarray(times[f"{k}_before"]) / np.asarray(times[k])
        row[f"{k}_speedup"] = {"median": float(np.median(r)), "min": float(r.min()),
                               "max": float(r.max())}
      rows.append(row)
      print(case, method, {k: f"{v * 1e3:.1f} ms" for k, v in med.items()},
            {k: round(row[f"{k}_speedup"]["median"], 2) for k in ("single", "fused")},
            flush=True)
  result = {"benchmark": "fused_steps",
            "settings": {"repeats": repeats, "steps": args.steps, "activation": "softplus:3",
                         "optimizer": "adam 1e-3", "timing": "round-robin per repeat, medians "
                         "per step; fused = one TrainStep.run of `steps` steps; speedup = "
                         "before / after per repeat"},
            "device": device_info(load_average_start=load_start,
                                  load_average_end=list(os.getloadavg())),
            "versions": {"jax": jax.__version__},
            "results": rows}
  write_result(args.out, result)


if __name__ == "__main__":
  main()
