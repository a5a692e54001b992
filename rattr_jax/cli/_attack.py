"""``rattr attack``: train (or load) a small CNN, attack its explanations, report and plot."""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax.cli import _common
from rattr_jax.viz._figures import _show_image

ATTACKS = ("topk", "mass_center", "targeted", "frame")
DEFAULT_ATTACKS = ("topk", "mass_center")
METHODS = ("gradient", "integrated_gradients", "smoothgrad")


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "attack", help="attack the saliency maps of a small CNN (PNG + JSON + table)",
      description="Trains (or loads with --weights) a small CNN on a dataset (default: the "
      "embedded MNIST subset), runs explanation attacks (Ghorbani et al.; the frame "
      "attack of Joo et al.) against the random-sign baseline at the same epsilon, "
      "prints top-k intersection, Spearman and centre shift, and writes a PNG grid "
      "(original | map | attacked image | attacked map) and a JSON summary.")
  _common.add_data_args(p)
  p.add_argument("--attack", action="append", choices=ATTACKS,
                 help=f"attack to run (repeatable; default: {', '.join(DEFAULT_ATTACKS)})")
  p.add_argument("--method", default="gradient", choices=METHODS,
                 help="attribution method that is attacked")
  p.add_argument("--epsilon", type=float, default=8.0,
                 help="L-inf budget on the [0, 255] pixel scale (default 8)")
  p.add_argument("--step-size", type=float, default=0.5,
                 help="signed step on the [0, 255] scale (default 0.5)")
  p.add_argument("--num-steps", type=int, default=100)
  p.add_argument("--k", type=int, default=50, help="top-k features (objective and metric)")
  p.add_argument("--beta", type=float, default=10.0, help="softplus beta of the surrogate")
  p.add_argument("--num-eval", type=int, default=32, help="test images attacked")
  p.add_argument("--num-images", type=int, default=4, help="images shown in the PNG")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--weights", default=None,
                 help=".npz with model weights: loaded if it exists, else written after training")
  p.add_argument("--out", default="out/attack", help="output directory")
  p.set_defaults(func=run)


def _save_weights(model, path):
  from flax import nnx
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
  np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})


def _load_weights(model, path):
  from flax import nnx
  graphdef, state = nnx.split(model)
  with np.load(path) as f:
    stored = dict(f)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  new = []
  for k, v in flat:
    name = jax.tree_util.keystr(k)
    if name not in stored or stored[name].shape != v.shape:
      raise ValueError(f"`--weights` {path} does not match the model (entry {name}).")
    new.append(jnp.asarray(stored[name], v.dtype))
  return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, new))


def _explainer(method, key):
  from rattr_jax import attribution as A
  if method == "gradient":
    return A.gradient
  if method == "integrated_gradients":
    return functools.partial(A.integrated_gradients, num_steps=20, batch_size=10)
  return functools.partial(A.smoothgrad, num_samples=10, stddev=0.1, key=key)


def _plot(path, x, m0, results, num_images):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(results)
  ncol = 2 + 2 * len(names)
  fig, axes = plt.subplots(num_images, ncol, figsize=(1.7 * ncol, 1.8 * num_images),
                           squeeze=False)
  for i in range(num_images):
    cells = [(x[i], "original", "gray"), (m0[i], "map", "hot")]
    for n in names:
      cells += [(results[n]["x_adv"][i], f"{n}\nattacked image", "gray"),
                (results[n]["map"][i], f"{n}\nattacked map", "hot")]
    for j, (img, title, cmap) in enumerate(cells):
      ax = axes[i, j]
      if cmap == "gray":
        _show_image(ax, img)  # gray for one channel, colour for RGB
      else:
        ax.imshow(np.asarray(img), cmap=cmap)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(title, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(args) -> int:
  from rattr_jax import attacks, maps, metrics, models
  from rattr_jax._quicktrain import accuracy
  from rattr_jax.data import load_dataset

  names = tuple(dict.fromkeys(args.attack or DEFAULT_ATTACKS))
  for flag, v in (("--epochs", args.epochs), ("--num-steps", args.num_steps),
                  ("--num-eval", args.num_eval), ("--num-images", args.num_images),
                  ("--k", args.k)):
    if v <= 0:
      raise ValueError(f"`{flag}` must be positive; got {v}.")
  if args.epsilon < 0 or args.step_size <= 0 or args.beta <= 0:
    raise ValueError("`--epsilon` must be >= 0 and `--step-size`, `--beta` positive.")
  con = _common.console()
  data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed,
                      max_test=max(args.num_eval, 200))
  if len(data.input_shape) != 3:
    raise ValueError(f"`--dataset` must hold images; {data.name} has shape {data.input_shape}.")
  if args.weights and os.path.exists(args.weights):
    model = models.create_model("cnn", input_shape=data.input_shape,
                                num_classes=data.num_classes, seed=args.seed)
    model = _load_weights(model, args.weights)
    con.print(f"loaded weights from {args.weights}")
  else:
    model, secs = _common.train_model("cnn", data, epochs=args.epochs, seed=args.seed)
    con.print(f"trained in {secs:.1f} s")
    if args.weights:
      _save_weights(model, args.weights)
  fn = models.as_fn(model)
  sur = models.surrogate_fn(model, beta=args.beta)
  acc = accuracy(fn, data.x_test, data.y_test)
  x = jnp.asarray(data.x_test[:args.num_eval])
  label = jnp.argmax(fn(x), -1)
  key = jax.random.key(args.seed)
  explain = _explainer(args.method, jax.random.fold_in(key, 1))
  eps, alpha = args.epsilon / 255.0, args.step_size / 255.0
  cfg = attacks.AttackConfig(epsilon=eps, step_size=alpha, num_steps=args.num_steps, k=args.k)
  h, w = data.input_shape[:2]
  mask = np.zeros((h, w), np.float32)
  mask[:, : w // 4] = 1.0  # targeted attack: pull the map to the left quarter

  def real_map(z):
    return maps.saliency_map(explain(fn, z, label))

  m0 = real_map(x)
  runs = {"random_sign": lambda: attacks.random_sign_attack(fn, explain, x, label, cfg, key=key,
                                                            surrogate=sur)}
  runs["topk"] = lambda: attacks.topk_attack(fn, explain, x, label, cfg, key=key, surrogate=sur)
  runs["mass_center"] = lambda: attacks.mass_center_attack(fn, explain, x, label, cfg, key=key,
                                                           surrogate=sur)
  runs["targeted"] = lambda: attacks.targeted_attack(fn, explain, x, label, mask, cfg, key=key,
                                                     surrogate=sur)
  runs["frame"] = lambda: attacks.frame_attack(
      fn, explain, x, label, attacks.frame_config(epsilon=eps, num_steps=args.num_steps),
      key=key, surrogate=sur)
  results, rows = {}, []
  for name in ("random_sign",) + names:
    t0 = time.perf_counter()
    r = runs[name]()
    r.x_adv.block_until_ready()
    secs = time.perf_counter() - t0
    m1 = real_map(r.x_adv)
    row = {
        "topk_intersection": float(metrics.topk_intersection(m0, m1, args.k).mean()),
        "spearman": float(metrics.spearman(m0, m1).mean()),
        "center_shift_px": float(metrics.center_shift(m0, m1).mean()),
        "mask_mass": float(jnp.sum(m1 * mask, axis=(1, 2)).mean()),
        "success_rate": float(r.success.mean()),
        "label_kept": float(jnp.mean(jnp.argmax(fn(r.x_adv), -1) == label)),
        "max_linf_255": float(jnp.max(jnp.abs(r.x_adv - x))) * 255,
        "surrogate_agreement": float(r.surrogate_agreement.mean()),
        "seconds": secs,
    }
    results[name] = {"x_adv": np.asarray(r.x_adv), "map": np.asarray(m1), "metrics": row}
    rows.append([name, row["topk_intersection"], row["spearman"], row["center_shift_px"],
                 row["mask_mass"], row["success_rate"], row["label_kept"], row["seconds"]])
  _common.print_table(
      f"explanation attacks on {args.method} maps, eps = {args.epsilon:g}/255, "
      f"{args.num_steps} steps, {args.num_eval} images (clean acc {acc:.3f})",
      ["attack", f"top-{args.k} ↓", "Spearman ↓", "shift px ↑", "left mass ↑", "success",
       "kept", "s"], rows)
  con.print("↓ / ↑: lower / higher = the explanation moved more (stronger attack); "
            "'left mass' is the map mass in the targeted attack's region (left quarter).")
  os.makedirs(args.out, exist_ok=True)
  png = os.path.join(args.out, "attack.png")
  _plot(png, np.asarray(x), np.asarray(m0), results, min(args.num_images, args.num_eval))
  payload = {
      "settings": {k: v for k, v in vars(args).items() if k != "func"},
      "dataset": data.name, "test_accuracy": acc, "attacks": list(names),
      "metrics": {n: r["metrics"] for n, r in results.items()},
      "png": png,
  }
  path = _common.write_json(os.path.join(args.out, "attack.json"), payload)
  con.print(f"wrote {png} and {path}")
  return 0
