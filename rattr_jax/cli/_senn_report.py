"""``rattr senn-report``: train SENNs over lambda; accuracy / stability / faithfulness; figures.

Example::

  rattr senn-report --out out/senn                       # embedded MNIST, 3 lambdas
  rattr senn-report --dataset breast_cancer --lambdas 1e-4,1e-2,1 --out out/senn_bc

Importing this module (the ``rattr`` command does) also registers the
``senn`` model with the training engine, so ``rattr train --model senn``
works (``--lam`` is the robustness weight lambda).
"""

from __future__ import annotations

import os

import numpy as np

from rattr_jax.cli import _common

_PRESET_OF = {"mnist_embedded": "mnist_fast", "mnist": "mnist", "breast_cancer": "breast_cancer",
              "wine": "wine"}


def register(subparsers) -> None:
  from rattr_jax.models.senn._engine import register_senn_training
  register_senn_training()
  p = subparsers.add_parser(
      "senn-report", help="train self-explaining networks over lambda and report them",
      description="Trains one SENN per robustness weight lambda (Alvarez-Melis & Jaakkola "
      "2018) and reports test accuracy, stability (local Lipschitz estimate of theta vs h and "
      "vs x), faithfulness (concept removal), post-hoc baselines (gradient, IG, SmoothGrad on "
      "a CE-trained black box), and writes explicitness.png (top-activating test images per "
      "concept), explanation.png (theta*h bars of one prediction), training.png (losses, "
      "reconstruction error, concept variance), tradeoff.png and senn_report.json.")
  _common.add_data_args(p)
  p.add_argument("--lambdas", default="1e-4,1e-2,1",
                 help="comma-separated robustness weights (default 1e-4,1e-2,1)")
  p.add_argument("--epochs", type=int, default=None, help="default: the dataset preset's")
  p.add_argument("--lr", type=float, default=None)
  p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
  p.add_argument("--num-concepts", dest="num_concepts", type=int, default=None)
  p.add_argument("--convention", default=None, choices=("clean", "original"),
                 help="robustness-loss convention (default clean)")
  p.add_argument("--num-projections", dest="num_projections", type=int, default=None,
                 help="Gaussian probes of the robustness residual (default: the preset's; "
                      "0 = exact, one backward pass per class)")
  p.add_argument("--max-train", dest="max_train", type=int, default=None)
  p.add_argument("--num-eval", dest="num_eval", type=int, default=100,
                 help="test points for stability and faithfulness")
  p.add_argument("--no-posthoc", dest="posthoc", action="store_false",
                 help="skip the post-hoc baselines")
  p.add_argument("--blackbox-epochs", dest="blackbox_epochs", type=int, default=None)
  p.add_argument("--explain-lambda", dest="explain_lambda", type=float, default=None,
                 help="lambda whose model the figures show (default: the first)")
  p.add_argument("--out", default="out/senn", help="output directory")
  p.set_defaults(func=run)


def _config(args, data):
  from rattr_jax.models.senn import SENNConfig, senn_preset
  base = (senn_preset(_PRESET_OF[data.name]) if data.name in _PRESET_OF
          else SENNConfig(dataset=data.name))
  changes = {"dataset": data.name, "seed": args.seed}
  for dest, field in (("epochs", "epochs"), ("lr", "learning_rate"),
                      ("batch_size", "batch_size"), ("num_concepts", "num_concepts"),
                      ("convention", "convention")):
    v = getattr(args, dest)
    if v is not None:
      changes[field] = v
  if args.num_projections is not None:
    if args.num_projections < 0:
      raise ValueError(f"`--num-projections` must be >= 0; got {args.num_projections}.")
    changes["num_projections"] = args.num_projections or None
  return base.replace(**changes)


def _lambdas(text: str) -> list[float]:
  try:
    vals = [float(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"`--lambdas` must be comma-separated numbers; got {text!r}.") from None
  if not vals or any(not v >= 0 for v in vals):
    raise ValueError(f"`--lambdas` must be non-negative numbers; got {text!r}.")
  return vals


def run(args) -> int:
  import jax
  import jax.numpy as jnp
  from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

  from rattr_jax.data import load_dataset
  from rattr_jax.models.senn import _figures as F
  from rattr_jax.models.senn import _report as R
  from rattr_jax.models.senn._aggregators import Aggregator

  lambdas = _lambdas(args.lambdas)
  if args.num_eval <= 0:
    raise ValueError(f"`--num-eval` must be positive; got {args.num_eval}.")
  con = _common.console()
  data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed,
                      max_train=args.max_train)
  cfg = _config(args, data)
  cfg.build(data.input_shape, data.num_classes)  # validate the combination before training
  settings = R.EvalSettings(num_eval=min(args.num_eval, len(data.x_test)))
  con.print(f"[bold]rattr senn-report[/] dataset={data.name} ({data.source}) "
            f"train={len(data.x_train)} test={len(data.x_test)} lambdas={lambdas} "
            f"epochs={cfg.epochs} lr={cfg.learning_rate} batch={cfg.batch_size} "
            f"convention={cfg.convention} probes={cfg.num_projections or 'exact'}")
  key = jax.random.key(args.seed)

  with Progress(TextColumn("[bold]{task.fields[run]}"), BarColumn(),
                TextColumn("epoch {task.completed}/{task.total}"),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                console=con) as prog:
    task = prog.add_task("senn", total=cfg.epochs, run="", stats="")

    def progress(name, epoch, rec):
      if epoch == 0:
        prog.reset(task, total=cfg.epochs)
      prog.update(task, completed=epoch + 1, run=name,
                  stats=f"CE {rec['prediction']:.3f}  L_theta {rec['robustness']:.3g}  "
                        f"test acc {rec.get('val_accuracy', float('nan')):.3f}")

    res = R.sweep(data, cfg, lambdas, settings, key=key, progress=progress, keep_models=True)
  runs = res["runs"]

  posthoc, bb = {}, None
  if args.posthoc:
    bb_epochs = args.blackbox_epochs or (3 if len(data.input_shape) == 3 else 30)
    name, fn, bb_acc = R.train_blackbox(data, epochs=bb_epochs, seed=args.seed)
    con.print(f"black box {name} (CE, {bb_epochs} epochs): test accuracy {bb_acc:.4f}; "
              "post-hoc stability ...")
    posthoc = R.evaluate_posthoc(fn, data, settings, key=jax.random.fold_in(key, 999))
    bb = {"model": name, "epochs": bb_epochs, "test_accuracy": bb_acc}

  os.makedirs(args.out, exist_ok=True)
  lam_fig = args.explain_lambda if args.explain_lambda is not None else lambdas[0]
  if lam_fig not in res["models"]:
    raise ValueError(f"`--explain-lambda` {lam_fig} is not one of --lambdas {lambdas}.")
  model = res["models"][lam_fig]
  figures = {}
  x_all = data.x_test[:1000]
  logits, e = model(jnp.asarray(x_all), return_explanation=True)
  pred = np.asarray(jnp.argmax(logits, -1))
  h = np.asarray(e.h)
  agg: Aggregator = model.aggregator
  is_image = len(data.input_shape) == 3
  if is_image:
    figures["explicitness"] = F.explicitness_grid(
        x_all, h, os.path.join(args.out, "explicitness.png"), labels=data.y_test[:1000],
        title=f"SENN concepts on {data.name} (lambda={lam_fig:g}): top-activating test images")
  i = 0
  rel = np.asarray(agg.class_relevance(e.theta[i:i + 1], jnp.asarray(pred[i:i + 1])))[0]
  names = None
  if not is_image:
    names = [f"x{j}" for j in range(h.shape[1] - 1)] + ["bias"]
  figures["explanation"] = F.theta_h_bars(
      x_all[i], rel, h[i], os.path.join(args.out, "explanation.png"), names=names,
      title=f"test example 0: label {data.y_test[i]}, predicted {pred[i]} "
            f"(lambda={lam_fig:g})")
  figures["training"] = F.training_diagnostics(
      {f"lambda={r['lambda']:g}": r["history"] for r in runs},
      os.path.join(args.out, "training.png"), title=f"SENN training on {data.name}")
  figures["tradeoff"] = F.tradeoff_plot(
      lambdas, {"test accuracy": [r["test_accuracy"] for r in runs],
                "stability (theta vs h), lower=better": [r["stability"]["mean"] for r in runs],
                "stability (theta vs x), lower=better":
                    [r["stability_vs_input"]["mean"] for r in runs],
                "faithfulness, higher=better": [r["faithfulness"]["mean"] for r in runs]},
      os.path.join(args.out, "tradeoff.png"),
      baselines={k: v["mean"] for k, v in posthoc.items()}, title=f"SENN on {data.name}")

  summary = {"dataset": data.name, "source": data.source, "config": cfg.__dict__,
             "eval_settings": dict(settings.__dict__,
                                   epsilon=settings.epsilon(data.input_shape)),
             "runs": runs, "posthoc": posthoc, "blackbox": bb, "figures": figures,
             "explained_lambda": lam_fig}
  path = _common.write_json(os.path.join(args.out, "senn_report.json"), summary)
  rows = [[f"{r['lambda']:g}", r["test_accuracy"], r["stability"]["mean"],
           r["stability_vs_input"]["mean"], r["faithfulness"]["mean"], r["reconstruction"],
           float(np.min(r["concept_variance"]))] for r in runs]
  rows += [[f"post-hoc {k}", bb["test_accuracy"], float("nan"), v["mean"], float("nan"),
            float("nan"), float("nan")] for k, v in posthoc.items()]
  _common.print_table(
      f"SENN on {data.name} ({settings.num_eval} test points for stability/faithfulness)",
      ["lambda", "test acc", "stab theta/h", "stab theta/x", "faithfulness", "recon MSE",
       "min concept var"], rows)
  con.print(f"wrote {path} and {', '.join(figures.values())}")
  return 0
