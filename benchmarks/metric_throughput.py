"""Throughput of the batched, jitted evaluation metrics vs Quantus on the same weights.

Cases (gradient explanations, batch 64, images per second = 64 / time):
  * MNIST CNN (trained, ReLU, 28x28x1): max-sensitivity (50 samples),
    local Lipschitz estimate by gradient ascent (20 steps, 1 restart) and by
    sampling (20 samples), insertion (20 steps);
  * MLP on flattened MNIST (784-128-128-10) and a tabular MLP
    (breast_cancer, 30-64-64-2): max-sensitivity (50) and local Lipschitz
    (ascent 20 / sampling 20).
Peers (with the optional ``bench`` extra): Quantus 0.6 MaxSensitivity
(``nr_samples=50``, ``lower_bound=0.02``) and LocalLipschitzEstimate
(``nr_samples=20``, ``normalise=False``) on the PyTorch twin of the same
network (`benchmarks/_torch_models.py`), with the raw torch gradient as
explanation, timed in the same process, round-robin with ours. Quantus's
LocalLipschitzEstimate samples 20 points; it is compared both with our
sampling estimator (the same work) and with our gradient ascent (20 steps,
each a double backward, so more work per step).

Usage: python benchmarks/metric_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _timing import device_info, medians, round_robin, write_result  # noqa: E402
from rattr_jax import attribution, metrics, models  # noqa: E402
import rattr_jax  # noqa: E402
rattr_jax.configure_cpu()  # inline CPU dispatch, as `rattr` does
from rattr_jax._quicktrain import fit  # noqa: E402
from rattr_jax.data import load_dataset  # noqa: E402
from rattr_jax.testing import trained_mnist_cnn  # noqa: E402

try:
  import torch
  import quantus
  from benchmarks._torch_models import torch_from_flax
except ImportError:  # pragma: no cover - the bench extra is optional
  torch = quantus = torch_from_flax = None

BATCH = 64
MS_SAMPLES, LLE_STEPS, LLE_SAMPLES, INS_STEPS = 50, 20, 20, 20
MS_EPS, LLE_STD = 0.02, 0.1


def torch_gradient(model, inputs, targets, **kwargs):
  """Quantus ``explain_func``: raw gradient of the target logit of the torch twin."""
  xi = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
  out = model(xi)
  out[torch.arange(len(targets)), torch.as_tensor(np.asarray(targets))].sum().backward()
  return xi.grad.numpy()


def quantus_cases(model, x, t):
  tm = torch_from_flax(model)
  xq = np.asarray(x, np.float32)
  if xq.ndim == 4:
    xq = xq.transpose(0, 3, 1, 2).copy()
  yq = np.asarray(t, np.int64)
  ms = quantus.MaxSensitivity(nr_samples=MS_SAMPLES, lower_bound=MS_EPS, disable_warnings=True)
  lle = quantus.LocalLipschitzEstimate(nr_samples=LLE_SAMPLES, perturb_std=LLE_STD,
                                       normalise=False, disable_warnings=True)

  def run(metric):
    def f():
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(model=tm, x_batch=xq, y_batch=yq, a_batch=None, explain_func=torch_gradient,
                      channel_first=True if xq.ndim == 4 else None, device="cpu",
                      batch_size=BATCH)
    return f

  return {"quantus_max_sensitivity": run(ms), "quantus_lle_sampling": run(lle)}


def ours_cases(fn, x, t, *, ms_batch_size, images: bool):
  explain = attribution.gradient
  key = jax.random.key(0)
  cases = {
      "max_sensitivity": lambda: metrics.max_sensitivity(
          fn, explain, x, t, key=key, num_samples=MS_SAMPLES, epsilon=MS_EPS,
          chunk_size=ms_batch_size),
      "lle_gradient_ascent": lambda: metrics.local_lipschitz_estimate(
          fn, explain, x, t, key=key, num_steps=LLE_STEPS, num_restarts=1),
      "lle_sampling": lambda: metrics.local_lipschitz_estimate(
          fn, explain, x, t, key=key, method="sampling", num_samples=LLE_SAMPLES, noise="gaussian",
          epsilon=LLE_STD),
  }
  if images:
    cases["insertion"] = lambda: metrics.insertion(fn, explain, x, t, num_steps=INS_STEPS).auc
  return cases


def bench(cases, repeats):
  """Warm-up (compile) once each, then ``repeats`` round-robin timings; medians."""
  times, warm = round_robin(cases, repeats)
  return medians(times), times, warm


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "results", "metric_throughput.json"))
  args = ap.parse_args()
  repeats = 2 if args.quick else 5
  if torch is not None:
    torch.set_num_threads(2)

  cnn, mnist = trained_mnist_cnn()
  x_img = jnp.asarray(mnist.x_test[:BATCH])
  mlp = models.create_model("mlp", input_shape=(784,), num_classes=10, seed=0)
  mlp = fit(mlp, mnist.x_train.reshape(len(mnist.x_train), -1), mnist.y_train, epochs=1, seed=0)
  tab = load_dataset("breast_cancer", seed=0)
  tab_mlp = models.create_model("mlp", input_shape=tab.x_train.shape[1:], num_classes=2,
                                hidden=(64, 64), seed=0)
  tab_mlp = fit(tab_mlp, tab.x_train, tab.y_train, epochs=5, seed=0)
  x_tab = jnp.asarray(np.resize(tab.x_test, (BATCH,) + tab.x_test.shape[1:]))

  setups = [
      ("mnist_cnn", cnn, x_img, 10, True),
      ("mnist_mlp", mlp, x_img.reshape(BATCH, -1), None, False),
      ("tabular_mlp", tab_mlp, x_tab, None, False),
  ]
  results = []
  for name, model, x, ms_bs, images in setups:
    fn = models.as_fn(model)
    t = jnp.asarray(np.asarray(fn(x)).argmax(1), jnp.int32)
    cases = ours_cases(fn, x, t, ms_batch_size=ms_bs, images=images)
    if quantus is not None:
      cases.update(quantus_cases(model, x, t))
    med, raw, warm = bench(cases, repeats)
    row = {"model": name, "batch": BATCH, "seconds_median": med,
           "images_per_s": {n: BATCH / v for n, v in med.items()},
           "first_call_seconds (compile+run)": warm, "raw_seconds": raw,
           "settings": {"max_sensitivity": {"num_samples": MS_SAMPLES, "epsilon": MS_EPS,
                                            "chunk_size": ms_bs},
                        "lle_gradient_ascent": {"num_steps": LLE_STEPS, "num_restarts": 1,
                                                "norm": "l2", "epsilon": 1.0},
                        "lle_sampling": {"num_samples": LLE_SAMPLES, "noise": "gaussian",
                                         "epsilon": LLE_STD},
                        "insertion": {"num_steps": INS_STEPS} if images else None}}
    if quantus is not None:
      q_ms, q_lle = med["quantus_max_sensitivity"], med["quantus_lle_sampling"]
      row["speedup_vs_quantus"] = {
          "max_sensitivity": q_ms / med["max_sensitivity"],
          "lle_sampling_vs_quantus_lle": q_lle / med["lle_sampling"],
          "lle_gradient_ascent_vs_quantus_lle": q_lle / med["lle_gradient_ascent"],
      }
    results.append(row)
    print(json.dumps({k: v for k, v in row.items() if k not in ("raw_seconds", "settings")},
                     indent=1), flush=True)

  payload = {
      "benchmark": "metric_throughput",
      "quick": args.quick, "repeats": repeats, "explanation": "gradient of the target logit",
      "device": device_info(quantus=None if quantus is None else quantus.__version__),
      "results": results,
  }
  write_result(args.out, payload)


if __name__ == "__main__":
  main()
