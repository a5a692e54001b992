"""``rattr explain``: train a small model, explain test examples, write a figure, JSON and a table."""

from __future__ import annotations

import os
import time

from rattr_jax.cli import _checks
from rattr_jax.cli import _common

METHODS = ("gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "decoy")
#: Short names accepted by ``--method``.
ALIASES = {"grad": "gradient", "ixg": "input_x_gradient", "ig": "integrated_gradients",
           "sg": "smoothgrad", "dance": "decoy"}
DEFAULT_METHODS = ("gradient", "integrated_gradients", "smoothgrad")
MODELS = ("mlp", "cnn", "lenet")
#: Examples per call for slow methods (the progress bar advances per chunk).
CHUNK = {"decoy": 2, "smoothgrad": 4, "integrated_gradients": 4}
#: Colormap of every saliency map the CLI draws (``rattr explain`` and ``rattr attack``).
CMAP = "inferno"


def register(subparsers):
  p = subparsers.add_parser(
      "explain", help="train a small model and write saliency maps (PNG + JSON + table)",
      description="Trains a small model on a dataset (default: the embedded MNIST "
      "subset), computes attributions of a few test examples and writes a figure "
      "(images: image | maps with colorbars; tabular data: bars per feature, with the "
      "dataset's feature names), the attributions (attributions.npz), a JSON summary and a "
      "table. Under `rattr launch` the examples are split over every process.")
  _common.add_data_args(p, lazy=True)
  p.add_argument("--model", default=None, type=_checks.choice(MODELS),
                 help="zoo model, one of mlp, cnn, lenet (default: cnn for MNIST, lenet for "
                      "CIFAR-10, mlp for tabular data and digits)")
  p.add_argument("--epochs", type=_checks.positive_int, default=3)
  p.add_argument("--num-images", dest="num_images", type=_checks.positive_int, default=6,
                 help="test examples explained")
  p.add_argument("--method", action="append", type=_checks.choice(METHODS, ALIASES),
                 help=f"attribution method, one of {', '.join(METHODS)} (aliases: "
                      f"{', '.join(f'{a}={b}' for a, b in ALIASES.items())}); repeatable "
                      f"(default: {', '.join(DEFAULT_METHODS)})")
  p.add_argument("--num-steps", dest="num_steps", type=_checks.positive_int, default=50,
                 help="integrated-gradients path points")
  p.add_argument("--num-samples", dest="num_samples", type=_checks.positive_int, default=50,
                 help="SmoothGrad samples")
  p.add_argument("--out", default="out/explain", help="output directory")
  p.set_defaults(func=run)
  return p


def check(args) -> None:
  """Every path and flag combination, before data is loaded."""
  _common.check_data_args(args)
  _checks.out_dir(args.out)
  args.model = _common.default_model(args.model, args.dataset)
  _common.check_model_for_dataset(args.model, args.dataset)
  args.method = tuple(dict.fromkeys(args.method or DEFAULT_METHODS))
  if "decoy" in args.method and args.dataset in _checks.TABULAR_DATASETS:
    raise _checks.CLIError(f"--method decoy needs images (DANCE perturbs a convolutional "
                           f"layer); --dataset {args.dataset} is tabular.")
  if "decoy" in args.method and args.model == "mlp":
    raise _checks.CLIError("--method decoy needs a convolutional --model (cnn or lenet).")


def explainers(*, num_steps: int, num_samples: int) -> dict:
  """Explainers ``e(fn, x, target, *, key)`` by method name (`rattr_jax.explainers.get`)."""
  from rattr_jax import explainers as X
  return {
      "gradient": X.get("gradient"),
      "input_x_gradient": X.get("input_x_gradient"),
      "integrated_gradients": X.get("integrated_gradients", num_steps=num_steps, chunk_size=25),
      "smoothgrad": X.get("smoothgrad", num_samples=num_samples, chunk_size=25),
  }


def run(args) -> int:
  _common.configure_cpu()
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rattr_jax import distributed as dist
  from rattr_jax import maps, metrics, models, viz
  from rattr_jax._quicktrain import accuracy
  from rattr_jax.data import load_dataset

  con = _common.console()
  methods = tuple(args.method)
  data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed,
                      max_train=args.max_train, lazy=args.lazy_data)
  con.print(f"[bold]rattr explain[/] dataset={data.name} ({data.source}) "
            f"train={len(data.x_train)} test={len(data.x_test)} model={args.model} "
            f"device={jax.devices()[0]}")
  model, train_s = _common.train_model(args.model, data, epochs=args.epochs, seed=args.seed)
  fn = models.as_fn(model)
  acc = accuracy(fn, data.x_test, data.y_test)
  con.print(f"test accuracy: [bold]{acc:.4f}[/] (trained in {train_s:.1f} s)")

  x = jnp.asarray(data.x_test[: args.num_images])
  y = np.asarray(data.y_test[: args.num_images])
  pred = np.asarray(jnp.argmax(fn(x), -1))
  target = jnp.asarray(pred)
  key = jax.random.key(args.seed)
  table = explainers(num_steps=args.num_steps, num_samples=args.num_samples)
  shown = list(methods)
  if "decoy" in methods:  # needs the model (its layer conv2 / second submodule)
    from rattr_jax import attribution
    from rattr_jax import core
    layer = attribution.decoy_layer(attribution.decoy_default_layer(model), model)
    table["decoy"] = core.BoundExplainer(
        "decoy", attribution.decoy_attribution,
        dict(layer=layer, base="gradient", epsilon=1.0, num_steps=100))
    if "gradient" not in shown:  # DANCE's base map, drawn beside the decoy map
      shown.insert(shown.index("decoy"), "gradient")

  # Per example (`distributed.per_example`): example i's key is fold_in(key, i), so its map
  # does not depend on the chunking, the device count or the number of processes; the
  # examples are sharded over every device of every process (`rattr launch -n N -- explain`).
  mesh = dist.data_mesh() if jax.device_count() > 1 else None
  xs, ts = np.asarray(x), np.asarray(target)
  sal, raw, timing = {}, {}, {}
  for name in shown:
    size = min(CHUNK.get(name, len(x)), len(x))
    run = dist.per_example(table[name], mesh, batch_argnums=(1, 2))

    def chunk(s):
      ix = np.minimum(np.arange(s, s + size), len(xs) - 1)  # the last chunk padded: one shape
      return dist.gather(run(fn, xs[ix], ts[ix], key=key, index=ix.astype(np.int32)))

    jax.block_until_ready(chunk(0))  # compile first (the timing excludes it)
    parts, secs = [], 0.0
    with _common.Progress(f"explaining: {name}", len(x), unit=" examples", con=con) as prog:
      for s in range(0, len(x), size):
        n = min(size, len(x) - s)
        t0 = time.perf_counter()
        parts.append(np.asarray(chunk(s))[:n])
        secs += time.perf_counter() - t0
        prog.advance(n)
    attr = np.concatenate(parts)
    timing[name] = secs / len(x) * 1e3
    raw[name] = attr
    sal[name] = np.asarray(maps.saliency_map(attr, reduce="abs_sum", normalize="sum_to_one"))

  if not dist.is_main_process():
    return 0  # process 0 writes the figure and the JSON
  os.makedirs(args.out, exist_ok=True)
  is_image = x.ndim == 4
  summary = {"dataset": data.name, "source": data.source, "model": args.model,
             "test_accuracy": acc, "train_seconds": train_s, "epochs": args.epochs,
             "labels": y.tolist(), "predictions": pred.tolist(), "methods": {}}
  rows = []
  ref = sal[shown[0]]
  k = max(1, int(0.1 * ref[0].size))
  for name in shown:
    s = sal[name]
    entry = {"ms_per_image": timing[name]}
    if name != shown[0]:
      rho = np.asarray(metrics.spearman(s, ref), float)  # NaN where a map is constant
      entry["spearman_vs_" + shown[0]] = (float(rho[~np.isnan(rho)].mean())
                                          if (~np.isnan(rho)).any() else None)
      entry["spearman_undefined"] = int(np.isnan(rho).sum())
      entry["top10pct_intersection_vs_" + shown[0]] = float(
          np.mean(metrics.topk_intersection(s, ref, k=k)))
    flat = s.reshape(len(s), -1)
    top = np.sort(flat, axis=1)[:, ::-1][:, :k].sum(1) / (flat.sum(1) + 1e-12)
    entry["mass_in_top10pct"] = float(np.mean(top))
    summary["methods"][name] = entry
    rows.append([name, entry["ms_per_image"], entry["mass_in_top10pct"],
                 entry.get("spearman_vs_" + shown[0]),
                 entry.get("top10pct_intersection_vs_" + shown[0])])
  labels = [f"y={a} pred={b}" for a, b in zip(y, pred)]
  title = f"{args.model} on {data.name} (test acc {acc:.3f})"
  if is_image:
    cols = {"image": np.asarray(x)}
    for name in shown:
      cols[_column_title(name, methods)] = sal[name]
    fig = viz.saliency_grid(cols, os.path.join(args.out, "saliency_grid.png"),
                            image_columns=("image",), row_labels=labels, title=title, cmap=CMAP,
                            colorbar=True)
  else:
    fig = viz.feature_bars({n: raw[n] for n in shown}, os.path.join(args.out, "attributions.png"),
                           feature_names=data.feature_names, row_labels=labels, title=title)
  summary["figure"] = fig
  summary["attributions"] = os.path.join(args.out, "attributions.npz")
  np.savez(summary["attributions"], **raw)  # per method: [num_images, *input shape]
  path = _common.write_json(os.path.join(args.out, "summary.json"), summary)
  _common.print_table(f"attributions of {len(x)} test examples",
                      ["method", "ms/example", "mass in top 10%", f"Spearman vs {shown[0]}",
                       f"top-10% overlap vs {shown[0]}"], rows, con=con)
  con.print(f"wrote {path} and {fig}")
  return 0


def _column_title(name: str, requested) -> str:
  if name == "gradient" and "decoy" in requested and "gradient" not in requested:
    return "gradient (DANCE base)"
  if name == "decoy":
    return "decoy (DANCE)"
  return name
