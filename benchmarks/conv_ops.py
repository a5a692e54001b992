"""Each convolution of the conv-net zoo, alone: forward, input gradient, weight gradient vs PyTorch.

Where the training-step rows of ``training_cost.py`` stand against PyTorch comes
down to two things: the convolutions, and everything around them (activations,
pooling, loss, optimizer), which XLA fuses and PyTorch runs op by op. This
script isolates the first. For every convolution of the MNIST CNN and the CIFAR
LeNet at batch 128 (softplus nets' shapes, float32, NHWC for us, NCHW for
PyTorch, its native layout) it times, round-robin in one process:

* ``forward``: ``rattr_jax.models.conv2d`` (``impl="auto"``, the library's
  default) against ``torch.nn.Conv2d`` under ``no_grad``;
* ``input_grad``: the VJP with respect to the input (ours: the custom VJP's
  input gradient alone, the unused weight gradient removed by XLA) against
  ``torch.autograd.grad(y, x, g)``;
* ``weight_grad``: the VJP with respect to the kernel against
  ``torch.autograd.grad(y, conv.weight, g)``.

``torch_over_jax`` holds the paired per-repeat ratios (> 1: ours faster).
Each timed call follows a pause (``--settle``, 50 ms) and one untimed call of
itself (``rewarm``), so that it runs as in a loop of itself: without the pause a
millisecond-long JAX call right after a PyTorch one shared the two cores with
PyTorch's OpenMP threads, which keep spinning after their work (CIFAR LeNet conv3
forward 5.95 ms after PyTorch's weight gradient, 3.01 ms without PyTorch in the
process; MNIST CNN conv1 forward 1.09 against 0.62 ms).

Since 2026-12-05 (fourth session) the forward and input-gradient convolutions are
oneDNN's (`rattr_jax.models._conv.ONEDNN`), which split each call statically over
the cores: a PyTorch call before them leaves its OpenMP threads spin-waiting (for
milliseconds) on the same cores, and the pause before a call leaves them cold. The
README's table is therefore measured with ``OMP_WAIT_POLICY=PASSIVE`` (PyTorch's
threads sleep as soon as their work is done; its own times were unchanged) and
``--settle 0``; the JSON records both settings.

Usage: python benchmarks/conv_ops.py [--quick] [--repeats N] [--out PATH]
       OMP_WAIT_POLICY=PASSIVE python benchmarks/conv_ops.py --settle 0
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: name -> (spatial size, input channels, output channels, kernel size); "SAME" padding.
LAYERS = {
    "cnn.conv1": (28, 1, 16, 5), "cnn.conv2": (14, 16, 32, 5),
    "lenet.conv1": (32, 3, 32, 3), "lenet.conv2": (32, 32, 32, 3),
    "lenet.conv3": (16, 32, 64, 3), "lenet.conv4": (16, 64, 64, 3),
}
BATCH = 128


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="3 repeats")
  p.add_argument("--repeats", type=int, default=25)
  p.add_argument("--layers", default=",".join(LAYERS))
  p.add_argument("--settle", type=float, default=0.05,
                 help="seconds of sleep before each variant's untimed + timed call (0: none)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "conv_ops.json"))
  args = p.parse_args()
  repeats = 3 if args.quick else args.repeats

  import rattr_jax
  settings = rattr_jax.configure_cpu()
  import jax
  import jax.numpy as jnp

  from _timing import device_info, medians, round_robin, write_result
  from rattr_jax import models
  try:
    import torch
    torch.set_num_threads(2)
  except ImportError:  # pragma: no cover - the bench extra is optional
    torch = None

  load_start = list(os.getloadavg())
  rows = []
  for name in args.layers.split(","):
    hw, cin, cout, k = LAYERS[name]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((BATCH, hw, hw, cin), dtype=np.float32)
    w_np = (rng.standard_normal((k, k, cin, cout), dtype=np.float32) / np.sqrt(k * k * cin))
    g_np = rng.standard_normal((BATCH, hw, hw, cout), dtype=np.float32)
    x, w, g = jnp.asarray(x_np), jnp.asarray(w_np), jnp.asarray(g_np)
    conv = lambda x, w: models.conv2d(x, w, padding="SAME")
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    fns = {"forward": lambda: fwd(x, w), "input_grad": lambda: dx(x, w, g),
           "weight_grad": lambda: dw(x, w, g)}
    sync = {}
    check = None
    if torch is not None:
      tconv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
      with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(w_np.transpose(3, 2, 0, 1).copy()))
      tx = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
      tg = torch.from_numpy(g_np.transpose(0, 3, 1, 2).copy())
      ty = tconv(tx)

      def t_fwd():
        with torch.no_grad():
          return tconv(tx)

      fns.update({
          "torch:forward": t_fwd,
          "torch:input_grad": lambda: torch.autograd.grad(ty, tx, tg, retain_graph=True),
          "torch:weight_grad": lambda: torch.autograd.grad(ty, tconv.weight, tg,
                                                           retain_graph=True)})
      sync.update({n: (lambda a: a) for n in fns if n.startswith("torch:")})
      # Same numbers (float32 rounding): the three results against PyTorch's.
      ours = (np.asarray(fwd(x, w)), np.asarray(dx(x, w, g)), np.asarray(dw(x, w, g)))
      theirs = (t_fwd().numpy().transpose(0, 2, 3, 1),
                fns["torch:input_grad"]()[0].numpy().transpose(0, 2, 3, 1),
                fns["torch:weight_grad"]()[0].numpy().transpose(2, 3, 1, 0))
      check = {key: float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
               for key, a, b in zip(("forward", "input_grad", "weight_grad"), ours, theirs)}
    times, _ = round_robin(fns, repeats, sync=sync, warmup=2, rewarm=1, settle=args.settle)
    med = medians(times)
    row = {"layer": name, "spatial": hw, "in_channels": cin, "out_channels": cout,
           "kernel": k, "batch": BATCH, "median_ms": {n: 1e3 * v for n, v in med.items()},
           "max_relative_difference_vs_torch": check}
    if torch is not None:
      row["torch_over_jax"] = {}
      for op in ("forward", "input_grad", "weight_grad"):
        r = np.asarray(times["torch:" + op]) / np.asarray(times[op])
        row["torch_over_jax"][op] = {"median": float(np.median(r)), "min": float(r.min()),
                                     "max": float(r.max())}
    rows.append(row)
    print(name, {n: f"{1e3 * v:.2f} ms" for n, v in med.items()},
          {op: round(v["median"], 2) for op, v in row.get("torch_over_jax", {}).items()},
          flush=True)
  result = {"benchmark": "conv_ops",
            "settings": {"repeats": repeats, "batch": BATCH, "dtype": "float32",
                         "padding": "SAME", "configure_cpu": settings,
                         "xla_flags": os.environ.get("XLA_FLAGS", ""),
                         "settle_s": args.settle,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                         "onednn": os.environ.get("RATTR_JAX_ONEDNN", "auto"),
                         "timing": "round-robin in one process, warmup 2, settle, rewarm 1; "
                                   "torch_over_jax paired per repeat (> 1: rattr_jax faster)"},
            "device": device_info(load_average_start=load_start),
            "results": rows}
  write_result(args.out, result)


if __name__ == "__main__":
  main()
