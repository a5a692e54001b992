"""``rattr explain``: train a small model, explain test images, write a PNG grid."""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax.cli import _common

METHODS = ("gradient", "input_x_gradient", "integrated_gradients", "smoothgrad")
DEFAULT_METHODS = ("gradient", "integrated_gradients", "smoothgrad")


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "explain", help="train a small CNN and write saliency maps (PNG + JSON)",
      description="Trains a small model on a dataset (default: the embedded MNIST "
      "subset), computes saliency maps for a few test images and writes a PNG grid "
      "(image | maps), a JSON summary and a table.")
  _common.add_data_args(p)
  p.add_argument("--model", default="cnn", choices=("mlp", "cnn", "lenet"))
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--num-images", type=int, default=6)
  p.add_argument("--method", action="append", choices=METHODS + EXTRA_METHODS,
                 help=f"attribution method (repeatable; default: {', '.join(DEFAULT_METHODS)})")
  p.add_argument("--num-steps", type=int, default=50, help="IG path points")
  p.add_argument("--num-samples", type=int, default=50, help="SmoothGrad samples")
  p.add_argument("--out", default="out/explain", help="output directory")
  p.set_defaults(func=run)


EXTRA_METHODS: tuple[str, ...] = ("decoy",)  # DANCE over gradient (issue 9)


def explainers(fn, *, num_steps: int, num_samples: int, key) -> dict:
  """Explain functions ``explain(x, target)`` by method name."""
  from rattr_jax import attribution as A
  return {
      "gradient": functools.partial(A.gradient, fn),
      "input_x_gradient": functools.partial(A.input_x_gradient, fn),
      "integrated_gradients": functools.partial(A.integrated_gradients, fn,
                                                num_steps=num_steps, batch_size=25),
      "smoothgrad": functools.partial(A.smoothgrad, fn, key=key, num_samples=num_samples,
                                      batch_size=25),
  }


def run(args) -> int:
  from rattr_jax import maps, metrics, models, viz
  from rattr_jax._quicktrain import accuracy
  from rattr_jax.data import load_dataset

  if args.epochs <= 0:
    raise ValueError(f"`--epochs` must be positive; got {args.epochs}.")
  if args.num_images <= 0:
    raise ValueError(f"`--num-images` must be positive; got {args.num_images}.")
  con = _common.console()
  methods = tuple(args.method or DEFAULT_METHODS)
  data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed)
  con.print(f"[bold]rattr explain[/] dataset={data.name} ({data.source}) "
            f"train={len(data.x_train)} test={len(data.x_test)} device={jax.devices()[0]}")
  model_name = args.model
  if len(data.input_shape) == 1 and model_name != "mlp":
    model_name = "mlp"
  model, train_s = _common.train_model(model_name, data, epochs=args.epochs, seed=args.seed)
  fn = models.as_fn(model)
  acc = accuracy(fn, data.x_test, data.y_test)
  con.print(f"test accuracy: [bold]{acc:.4f}[/] (trained in {train_s:.1f} s)")

  x = jnp.asarray(data.x_test[: args.num_images])
  y = np.asarray(data.y_test[: args.num_images])
  pred = np.asarray(jnp.argmax(fn(x), -1))
  target = jnp.asarray(pred)
  key = jax.random.key(args.seed)
  table = explainers(fn, num_steps=args.num_steps, num_samples=args.num_samples, key=key)
  if "decoy" in methods:  # needs the model (its layer conv2 / second submodule)
    from rattr_jax.attribution import _decoy
    table["decoy"] = _decoy.cli_explainer(fn, model, key=key)
  for name in methods:
    if name not in table:
      raise ValueError(f"Unknown `--method` {name!r}; expected one of {sorted(table)}.")

  sal, timing = {}, {}
  for name in methods:
    explain = table[name]
    jax.block_until_ready(explain(x, target))  # compile
    t0 = time.perf_counter()
    attr = jax.block_until_ready(explain(x, target))
    timing[name] = (time.perf_counter() - t0) / len(x) * 1e3
    sal[name] = np.asarray(maps.saliency_map(attr, reduce="abs_sum", normalize="sum_to_one"))

  os.makedirs(args.out, exist_ok=True)
  is_image = x.ndim == 4
  summary = {"dataset": data.name, "source": data.source, "model": model_name,
             "test_accuracy": acc, "train_seconds": train_s, "epochs": args.epochs,
             "labels": y.tolist(), "predictions": pred.tolist(), "methods": {}}
  rows = []
  ref = sal[methods[0]]
  k = max(1, int(0.1 * ref[0].size))
  for name in methods:
    s = sal[name]
    entry = {"ms_per_image": timing[name]}
    if name != methods[0]:
      entry["spearman_vs_" + methods[0]] = float(np.mean(metrics.spearman(s, ref)))
      entry["top10pct_intersection_vs_" + methods[0]] = float(
          np.mean(metrics.topk_intersection(s, ref, k)))
    flat = s.reshape(len(s), -1)
    top = np.sort(flat, axis=1)[:, ::-1][:, :k].sum(1) / (flat.sum(1) + 1e-12)
    entry["mass_in_top10pct"] = float(np.mean(top))
    summary["methods"][name] = entry
    rows.append([name, entry["ms_per_image"], entry["mass_in_top10pct"],
                 entry.get("spearman_vs_" + methods[0], 1.0),
                 entry.get("top10pct_intersection_vs_" + methods[0], 1.0)])
  if is_image:
    cols = {"image": np.asarray(x)}
    cols.update(sal)
    png = viz.saliency_grid(cols, os.path.join(args.out, "saliency_grid.png"),
                            image_columns=("image",),
                            row_labels=[f"y={a} pred={b}" for a, b in zip(y, pred)],
                            title=f"{model_name} on {data.name} (test acc {acc:.3f})")
    summary["figure"] = png
  path = _common.write_json(os.path.join(args.out, "summary.json"), summary)
  _common.print_table(f"saliency maps ({len(x)} test images)",
                      ["method", "ms/image", "mass in top 10%", f"Spearman vs {methods[0]}",
                       f"top-10% overlap vs {methods[0]}"], rows)
  con.print(f"wrote {path}" + (f" and {summary['figure']}" if is_image else ""))
  return 0
