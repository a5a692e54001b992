"""Attack strength: Ghorbani attacks against random signs on MNIST and CIFAR-10.

Trains two ReLU classifiers on real data -- the MNIST CNN on the embedded
5,000 digits (`rattr_jax.testing.trained_mnist_cnn`) and the CIFAR LeNet of
the gradient-alignment paper on the offline CIFAR-10 copy
(``../shared/data/cifar10.npz``; skipped when absent) -- and attacks the
gradient maps of correctly classified test images with `random_sign_attack`,
`topk_attack` and `mass_center_attack` (softplus-10 surrogate, 100 signed
steps of 0.5/255, the label checked on the real model at every step) at
eps in {2, 4, 8}/255. Reports, on the real model's maps (abs-sum over
channels), the top-k intersection (k = 50 on MNIST, 100 on CIFAR as in the
paper), Spearman's rho over all pixels and the centre-of-mass shift in pixels,
as means over the images. Writes ``benchmarks/results/attack_strength.json``.

Usage:
  python benchmarks/attack_strength.py            # ~8 min on 2 cores
  python benchmarks/attack_strength.py --quick    # MNIST only, eps 8/255
"""

from __future__ import annotations

import argparse
import json
import os
import time

import rattr_jax

rattr_jax.configure_cpu()  # before JAX starts (inline CPU dispatch)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rattr_jax import attacks, maps, metrics, models  # noqa: E402
from rattr_jax._quicktrain import accuracy, fit  # noqa: E402
from rattr_jax.attribution import gradient  # noqa: E402
from rattr_jax.data import load_dataset  # noqa: E402
from _timing import device_info  # noqa: E402

ATTACKS = {"random_sign": attacks.random_sign_attack, "topk": attacks.topk_attack,
           "mass_center": attacks.mass_center_attack}


def _setup_mnist():
  from rattr_jax.testing import trained_mnist_cnn
  model, data = trained_mnist_cnn()
  return "mnist_cnn", model, data, 50


def _setup_cifar(epochs: int, max_train: int):
  data = load_dataset("cifar10", max_train=max_train)
  model = models.create_model("lenet", input_shape=data.input_shape, num_classes=10, seed=0)
  t0 = time.perf_counter()
  model = fit(model, data.x_train, data.y_train, epochs=epochs, batch_size=64,
              learning_rate=1e-3,
              progress=lambda e, l: print(f"  cifar lenet epoch {e + 1}: loss {l:.3f} "
                                          f"({time.perf_counter() - t0:.0f} s)", flush=True))
  return "cifar_lenet", model, data, 100


def evaluate(name, model, data, k, epsilons, num_images, num_steps, beta):
  fn = models.as_fn(model)
  sur = models.surrogate_fn(model, beta=beta)
  acc = accuracy(fn, data.x_test[:2000], data.y_test[:2000])
  # the first `num_images` correctly classified test images (fixed order)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(data.x_test))[:4 * num_images]
  xs, ys = data.x_test[order], data.y_test[order]
  pred = np.asarray(jnp.argmax(fn(jnp.asarray(xs)), -1))
  keep = np.flatnonzero(pred == ys)[:num_images]
  x, label = jnp.asarray(xs[keep]), jnp.asarray(ys[keep])
  m0 = maps.saliency_map(gradient(fn, x, label))
  rows = []
  for eps in epsilons:
    cfg = attacks.AttackConfig(epsilon=eps / 255, step_size=0.5 / 255, num_steps=num_steps,
                               k=k)
    for attack, run in ATTACKS.items():
      t0 = time.perf_counter()
      r = run(fn, gradient, x, label, cfg, key=jax.random.key(0), surrogate=sur)
      m1 = maps.saliency_map(gradient(fn, r.x_adv, label))
      row = {"epsilon_255": eps, "attack": attack,
             "topk_intersection": float(metrics.topk_intersection(m0, m1, k).mean()),
             "spearman": float(metrics.spearman(m0, m1).mean()),
             "center_shift_px": float(metrics.center_shift(m0, m1).mean()),
             "label_kept": float(jnp.mean(jnp.argmax(fn(r.x_adv), -1) == label)),
             "success": float(r.success.mean()),
             "surrogate_agreement": float(r.surrogate_agreement.mean()),
             "seconds": time.perf_counter() - t0}
      rows.append(row)
      print(f"  {name} eps={eps}/255 {attack:12s} top-{k} {row['topk_intersection']:.3f} "
            f"spearman {row['spearman']:.3f} shift {row['center_shift_px']:.2f} px "
            f"({row['seconds']:.0f} s)", flush=True)
  return {"model": name, "test_accuracy": acc, "num_images": int(len(keep)), "k": k,
          "num_steps": num_steps, "surrogate_beta": beta, "rows": rows}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--num-images", type=int, default=32)
  p.add_argument("--num-steps", type=int, default=100)
  p.add_argument("--cifar-epochs", type=int, default=4)
  p.add_argument("--cifar-max-train", type=int, default=20000)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                               "attack_strength.json"))
  args = p.parse_args(argv)
  epsilons = (8,) if args.quick else (2, 4, 8)
  t_all = time.perf_counter()
  results = [evaluate(*_setup_mnist(), epsilons, args.num_images, args.num_steps, 10.0)]
  if not args.quick:
    try:
      setup = _setup_cifar(args.cifar_epochs, args.cifar_max_train)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
      print(f"  CIFAR-10 skipped: {e}")
    else:
      results.append(evaluate(*setup, epsilons, args.num_images, args.num_steps, 10.0))
  out = {"benchmark": "attack_strength", "quick": args.quick,
         "device": device_info(),
         "settings": {"step_size_255": 0.5, "maps": "gradient, abs-sum over channels, sum to 1",
                      "metrics": "on the real (ReLU) model's maps; means over images"},
         "results": results, "seconds": time.perf_counter() - t_all}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {args.out} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
