"""``rattr attack``: train (or load) a small model, attack its explanations, report and plot."""

from __future__ import annotations

import os
import time

from rattr_jax.cli import _checks
from rattr_jax.cli import _common
from rattr_jax.cli._explain import ALIASES, CMAP

ATTACKS = ("topk", "mass_center", "targeted", "frame")
DEFAULT_ATTACKS = ("topk", "mass_center")
METHODS = ("gradient", "integrated_gradients", "smoothgrad")
MODELS = ("cnn", "lenet", "mlp")
#: Examples attacked per compiled call (the progress bar advances per chunk).
CHUNK = 8


def register(subparsers):
  p = subparsers.add_parser(
      "attack", help="attack the saliency maps of a small model (PNG + JSON + table)",
      description="Trains (or loads with --weights) a small model on an image dataset "
      "(default: the embedded MNIST subset), runs explanation attacks (Ghorbani et al.; the "
      "frame attack of Joo et al.) against the random-sign baseline at the same epsilon, "
      "prints top-k intersection, Spearman and centre shift, and writes a PNG grid "
      "(original | map | attacked image | attacked map, with per-image metrics) and a JSON "
      "summary. Radii are in input units (inputs lie in [0, 1]); fractions such as 8/255 "
      "are accepted.")
  _common.add_data_args(p, lazy=True)
  p.add_argument("--model", default=None, type=_checks.choice(MODELS),
                 help="zoo model, one of cnn, lenet, mlp (default: cnn for MNIST-like "
                      "data, lenet for CIFAR-10, mlp for digits)")
  p.add_argument("--attack", action="append", type=_checks.choice(ATTACKS),
                 help=f"attack to run, one of {', '.join(ATTACKS)}; repeatable "
                      f"(default: {', '.join(DEFAULT_ATTACKS)})")
  p.add_argument("--method", default="gradient",
                 type=_checks.choice(METHODS, {a: m for a, m in ALIASES.items() if m in METHODS}),
                 help=f"attribution method that is attacked, one of {', '.join(METHODS)} "
                      "(aliases grad, ig, sg)")
  p.add_argument("--epsilon", type=_checks.epsilon, default=8 / 255,
                 help="L-inf radius in input units, e.g. 8/255 or 0.03 (default 8/255)")
  p.add_argument("--step-size", dest="step_size", type=_checks.step_size, default=0.5 / 255,
                 help="signed step in input units (default 0.5/255)")
  p.add_argument("--num-steps", dest="num_steps", type=_checks.positive_int, default=100)
  p.add_argument("--k", type=_checks.positive_int, default=50,
                 help="top-k features (objective and metric)")
  p.add_argument("--beta", type=_checks.positive_float, default=10.0,
                 help="softplus beta of the surrogate")
  p.add_argument("--num-eval", dest="num_eval", type=_checks.positive_int, default=32,
                 help="test images attacked")
  p.add_argument("--num-images", dest="num_images", type=_checks.positive_int, default=4,
                 help="images shown in the PNG")
  p.add_argument("--epochs", type=_checks.positive_int, default=3)
  p.add_argument("--weights", default=None,
                 help=".npz with model weights: loaded if it exists, else written after training")
  p.add_argument("--out", default="out/attack", help="output directory")
  p.set_defaults(func=run)
  return p


def check(args) -> None:
  """Every path and flag combination, before data is loaded."""
  _common.check_data_args(args)
  _checks.out_dir(args.out)
  if args.weights is not None:
    _checks.weights_file(args.weights)
  if args.dataset in _checks.TABULAR_DATASETS:
    raise _checks.CLIError(f"--dataset {args.dataset} is tabular; rattr attack needs images "
                           f"(one of {', '.join(_checks.IMAGE_DATASETS)}).")
  args.model = _common.default_model(args.model, args.dataset)
  _common.check_model_for_dataset(args.model, args.dataset)
  if args.num_images > args.num_eval:
    raise _checks.CLIError(f"--num-images ({args.num_images}) must be <= --num-eval "
                           f"({args.num_eval}).")
  if args.step_size > args.epsilon > 0:
    raise _checks.CLIError(f"--step-size ({args.step_size:.4g}) must be <= --epsilon "
                           f"({args.epsilon:.4g}).")


def _save_weights(model, path):
  import jax
  import numpy as np
  from flax import nnx
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
  np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})


def _load_weights(model, path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  graphdef, state = nnx.split(model)
  try:
    with np.load(path, allow_pickle=False) as f:
      stored = dict(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"--weights {path!r} is not a readable .npz weights file ({e}).") from None
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  new = []
  for k, v in flat:
    name = jax.tree_util.keystr(k)
    if name not in stored or stored[name].shape != v.shape:
      raise ValueError(f"--weights {path} does not match --model (entry {name}); it was "
                       "written for another model or dataset.")
    new.append(jnp.asarray(stored[name], v.dtype))
  return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, new))


def _explainer(method):
  from rattr_jax import explainers
  if method == "gradient":
    return explainers.get("gradient")
  if method == "integrated_gradients":
    return explainers.get("integrated_gradients", num_steps=20, chunk_size=10)
  return explainers.get("smoothgrad", num_samples=10, stddev=0.1)


def _attack_fns(args, mask):
  """``name -> (attack, keyword arguments)``; ``attack(fn, explain, x, label, *, key, ...)``
  returns ``x_adv``, ``success``, ``surrogate_agreement``."""
  from rattr_jax import attacks
  eps = args.epsilon
  cfg = attacks.AttackConfig(epsilon=eps, step_size=args.step_size, num_steps=args.num_steps,
                             k=args.k)
  fcfg = attacks.frame_config(epsilon=max(eps, 1e-12), num_steps=args.num_steps)
  return {
      "random_sign": (attacks.random_sign_attack, {"config": cfg}),
      "topk": (attacks.topk_attack, {"config": cfg}),
      "mass_center": (attacks.mass_center_attack, {"config": cfg}),
      "targeted": (attacks.targeted_attack, {"config": cfg, "mask": mask}),
      "frame": (attacks.frame_attack, {"config": fcfg}),
  }


def _nanmean(v) -> float:
  import numpy as np
  v = np.asarray(v, float)
  return float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else float("nan")


def _plot(path, x, m0, results, num_images, *, title, mask, frame, k):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from rattr_jax.viz import add_colorbar, show_image
  names = list(results)
  ncol = 2 + 2 * len(names)
  fig, axes = plt.subplots(num_images, ncol, figsize=(2.0 * ncol, 2.25 * num_images + 0.5),
                           squeeze=False)
  for i in range(num_images):
    cells = [(x[i], "original", None, None), (m0[i], "map", None, None)]
    for n in names:
      r = results[n]
      rho = r["per_image"]["spearman"][i]  # NaN (shown "–") for a constant map
      note = (f"top-{k} {r['per_image']['topk_intersection'][i]:.2f}  "
              f"ρ {'–' if np.isnan(rho) else f'{rho:.2f}'}\n"
              f"shift {r['per_image']['center_shift_px'][i]:.1f} px")
      outline = mask if n == "targeted" else frame if n == "frame" else None
      cells += [(r["x_adv"][i], f"{n}\nattacked image", None, None),
                (r["map"][i], f"{n}\nattacked map", note, outline)]
    for j, (img, head, note, outline) in enumerate(cells):
      ax = axes[i, j]
      if img.ndim == 3:
        show_image(ax, img)
      else:
        im = ax.imshow(np.asarray(img), cmap=CMAP, vmin=0.0, vmax=float(np.max(img)) or 1.0)
        add_colorbar(fig, ax, im)
        if outline is not None:  # the attack's target region
          ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.8)
      ax.set_xticks([])
      ax.set_yticks([])
      if note:
        ax.set_xlabel(note, fontsize=6)
      if i == 0:
        ax.set_title(head, fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(args) -> int:
  _common.configure_cpu()
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rattr_jax import attacks, maps, metrics, models
  from rattr_jax import distributed as dist
  from rattr_jax._quicktrain import accuracy
  from rattr_jax.data import load_dataset

  names = tuple(dict.fromkeys(args.attack or DEFAULT_ATTACKS))
  con = _common.console()
  data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed,
                      max_train=args.max_train, max_test=max(args.num_eval, 200),
                      lazy=args.lazy_data)
  model_name = args.model
  con.print(f"[bold]rattr attack[/] dataset={data.name} ({data.source}) model={model_name} "
            f"method={args.method} epsilon={args.epsilon:.4g} ({args.epsilon * 255:.3g}/255) "
            f"device={jax.devices()[0]}")
  if args.weights and os.path.exists(args.weights):
    model = models.create_model(model_name, input_shape=data.input_shape,
                                num_classes=data.num_classes, seed=args.seed)
    model = _load_weights(model, args.weights)
    con.print(f"loaded weights from {args.weights}")
  else:
    model, secs = _common.train_model(model_name, data, epochs=args.epochs, seed=args.seed)
    con.print(f"trained in {secs:.1f} s")
    if args.weights:
      _save_weights(model, args.weights)
      con.print(f"wrote {args.weights}")
  fn = models.as_fn(model)
  sur = models.surrogate_fn(model, beta=args.beta)
  acc = accuracy(fn, data.x_test, data.y_test)
  x = jnp.asarray(data.x_test[:args.num_eval])
  label = jnp.argmax(fn(x), -1)
  key = jax.random.key(args.seed)
  explain = _explainer(args.method)
  map_key = jax.random.fold_in(key, 1)
  h, w = data.input_shape[:2]
  mask = np.zeros((h, w), np.float32)
  mask[:, : w // 4] = 1.0  # targeted attack: pull the map to the left quarter
  frame = np.asarray(attacks.frame_map(h, w))

  # Per example (`distributed.per_example`): example i's key is fold_in(key, i), so its
  # result does not depend on the chunking, the device count or the number of processes;
  # the examples are sharded over every device of every process (`rattr launch -n N -- attack`).
  mesh = dist.data_mesh() if jax.device_count() > 1 else None
  index = np.arange(len(x), dtype=np.int32)
  map_run = dist.per_example(explain, mesh, batch_argnums=(1, 2))

  def real_map(z):
    return maps.saliency_map(dist.gather(map_run(fn, np.asarray(z), np.asarray(label),
                                                 key=map_key, index=index)))

  m0 = np.asarray(real_map(x))
  runs = _attack_fns(args, mask)
  size = min(CHUNK, len(x))
  starts = list(range(0, len(x), size))
  results, rows = {}, []
  xs, ls = np.asarray(x), np.asarray(label)
  for name in ("random_sign",) + names:
    t0 = time.perf_counter()
    parts = []
    f, kw = runs[name]
    run = dist.per_example(f, mesh, batch_argnums=(2, 3))
    with _common.Progress(f"attack {name}", len(x), unit=" images", con=con) as prog:
      for s in starts:
        n = min(size, len(x) - s)
        # the last chunk padded (repeating its last example): one compilation
        ix = np.minimum(np.arange(s, s + size), len(x) - 1).astype(np.int32)
        r = dist.gather(run(fn, explain, xs[ix], ls[ix], key=key, index=ix, surrogate=sur,
                            **kw))
        parts.append((np.asarray(r.x_adv)[:n], np.asarray(r.success)[:n],
                      np.asarray(r.surrogate_agreement)[:n]))
        prog.advance(n)
    secs = time.perf_counter() - t0
    x_adv = jnp.asarray(np.concatenate([p[0] for p in parts]))
    success = np.concatenate([p[1] for p in parts])
    agreement = np.concatenate([p[2] for p in parts])
    m1 = np.asarray(real_map(x_adv))
    per = {
        "topk_intersection": np.asarray(metrics.topk_intersection(m0, m1, k=args.k)),
        "spearman": np.asarray(metrics.spearman(m0, m1)),
        "center_shift_px": np.asarray(metrics.center_shift(m0, m1)),
    }
    row = {
        "topk_intersection": float(per["topk_intersection"].mean()),
        # Spearman is NaN for a constant map (undefined): averaged over the defined ones.
        "spearman": _nanmean(per["spearman"]),
        "spearman_undefined": int(np.isnan(per["spearman"]).sum()),
        "center_shift_px": float(per["center_shift_px"].mean()),
        "mask_mass": float(np.sum(m1 * mask, axis=(1, 2)).mean()),
        "frame_mass": float(np.sum(m1 * frame, axis=(1, 2)).mean()),
        "success_rate": float(success.mean()),
        "label_kept": float(jnp.mean(jnp.argmax(fn(x_adv), -1) == label)),
        "max_linf": float(jnp.max(jnp.abs(x_adv - x))),
        "surrogate_agreement": float(agreement.mean()),
        "seconds": secs,
    }
    results[name] = {"x_adv": np.asarray(x_adv), "map": m1, "metrics": row, "per_image": per}
    rows.append([name, row["topk_intersection"], row["spearman"], row["center_shift_px"],
                 row["mask_mass"], row["frame_mass"], row["success_rate"], row["label_kept"],
                 row["seconds"]])
  eps_txt = f"ε = {args.epsilon:.4g} ({args.epsilon * 255:.3g}/255)"
  _common.print_table(
      f"explanation attacks on {args.method} maps of {model_name}, {eps_txt}, "
      f"{args.num_steps} steps, {args.num_eval} images (clean acc {acc:.3f})",
      ["attack", f"top-{args.k} ↓", "Spearman ↓", "shift px ↑", "left mass ↑", "frame mass ↑",
       "success", "kept", "s"], rows, con=con)
  con.print("↓ / ↑: lower / higher = the explanation moved more (stronger attack); "
            "'left mass' is the map mass in the targeted attack's region (left quarter), "
            "'frame mass' the mass on the frame attack's border.")
  if not dist.is_main_process():
    return 0  # process 0 writes the figure and the JSON
  os.makedirs(args.out, exist_ok=True)
  png = os.path.join(args.out, "attack.png")
  _plot(png, np.asarray(x), m0, results, min(args.num_images, args.num_eval),
        title=f"{args.method} maps of {model_name} on {data.name} under explanation attacks, "
              f"{eps_txt}, {args.num_steps} steps", mask=mask, frame=frame, k=args.k)
  payload = {
      "settings": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"},
      "dataset": data.name, "model": model_name, "test_accuracy": acc, "attacks": list(names),
      "metrics": {n: r["metrics"] for n, r in results.items()},
      "per_image": {n: {m: v.tolist() for m, v in r["per_image"].items()}
                    for n, r in results.items()},
      "png": png,
  }
  path = _common.write_json(os.path.join(args.out, "attack.json"), payload)
  con.print(f"wrote {png} and {path}")
  return 0
