"""``rattr senn-report``: train SENNs over lambda; accuracy / stability / faithfulness; figures.

Example::

  rattr senn-report --out out/senn                       # embedded MNIST, 3 lambdas
  rattr senn-report --dataset breast_cancer --lambdas 1e-4,1e-2,1 --out out/senn_bc

``rattr train --model senn`` trains one SENN with the training engine
(``--lam`` is the robustness weight lambda).
"""

from __future__ import annotations

import os

from rattr_jax.cli import _checks
from rattr_jax.cli import _common

_PRESET_OF = {"mnist_embedded": "mnist_fast", "mnist": "mnist", "breast_cancer": "breast_cancer",
              "wine": "wine"}


def register(subparsers):
  C = _checks
  p = subparsers.add_parser(
      "senn-report", help="train self-explaining networks over lambda and report them",
      description="Trains one SENN per robustness weight lambda (Alvarez-Melis & Jaakkola "
      "2018) and reports test accuracy, stability (local Lipschitz estimate of theta vs h and "
      "vs x; median and quartiles, since it is heavy-tailed), faithfulness (concept removal), "
      "dead concepts, post-hoc baselines (gradient, IG, SmoothGrad on a CE-trained black "
      "box), and writes explicitness.png (top-activating test images per concept; images "
      "only), explanation.png (theta*h bars of one prediction), training.png (losses, "
      "reconstruction error, concept variance), tradeoff.png and senn_report.json.")
  _common.add_data_args(p)
  p.add_argument("--lambdas", default=(1e-4, 1e-2, 1.0), type=C.float_list,
                 help="comma-separated robustness weights >= 0 (default 1e-4,1e-2,1)")
  p.add_argument("--epochs", type=C.positive_int, default=None,
                 help="default: the dataset preset's")
  p.add_argument("--lr", type=C.positive_float, default=None)
  p.add_argument("--batch-size", dest="batch_size", type=C.positive_int, default=None)
  p.add_argument("--num-concepts", dest="num_concepts", type=C.positive_int, default=None)
  p.add_argument("--convention", default=None, type=C.choice(("clean", "original")),
                 help="robustness-loss convention: clean (default) or original")
  p.add_argument("--num-projections", dest="num_projections", type=C.nonneg_int, default=None,
                 help="Gaussian probes of the robustness residual (default: the preset's; "
                      "0 = exact, one backward pass per class)")
  p.add_argument("--num-eval", dest="num_eval", type=C.positive_int, default=100,
                 help="test points for stability and faithfulness")
  p.add_argument("--no-posthoc", dest="posthoc", action="store_false",
                 help="skip the post-hoc baselines")
  p.add_argument("--blackbox-epochs", dest="blackbox_epochs", type=C.positive_int, default=None,
                 help="epochs of the post-hoc black box (default 3 for images, 30 for tabular)")
  p.add_argument("--explain-lambda", dest="explain_lambda", type=C.nonneg_float, default=None,
                 help="lambda whose model the figures show (one of --lambdas; default: the first)")
  p.add_argument("--out", default="out/senn", help="output directory")
  p.set_defaults(func=run)
  return p


def check(args) -> None:
  """Every path and flag combination, before data is loaded."""
  _common.check_data_args(args)
  _checks.out_dir(args.out)
  lambdas = list(args.lambdas)
  if args.explain_lambda is not None and args.explain_lambda not in lambdas:
    raise _checks.CLIError(f"--explain-lambda {args.explain_lambda:g} is not one of --lambdas "
                           f"{','.join(f'{v:g}' for v in lambdas)}.")


def _config(args, data):
  from rattr_jax.senn import SENNConfig, senn_preset
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
    changes["num_projections"] = args.num_projections or None
  return base.replace(**changes)


def _iqr(s) -> str:
  """``median [q25, q75]`` of a summary dict, ``–`` when there is none."""
  if not s or not s.get("n"):
    return _common.MISSING
  return f"{_common.fmt(s['median'])} [{_common.fmt(s['q25'])}, {_common.fmt(s['q75'])}]"


def run(args) -> int:
  _common.configure_cpu()
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rattr_jax.data import load_dataset
  from rattr_jax.senn import Aggregator
  from rattr_jax.senn import report as R
  F = R  # the figures are in the same public module

  lambdas = [float(v) for v in args.lambdas]
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

  with _common.Progress("SENN training", len(lambdas) * cfg.epochs, unit=" epochs",
                        con=con) as prog:
    def progress(name, epoch, rec):
      val = rec.get("val_accuracy")
      prog.advance(1, info=f"{name} epoch {epoch + 1}: CE {rec['prediction']:.3f}  "
                           f"L_theta {rec['robustness']:.3g}  test acc "
                           f"{_common.fmt(val)}")

    def evaluated(name, secs):
      prog.con.print(f"{name}: stability and faithfulness on {settings.num_eval} test points "
                     f"in {secs:.1f} s", highlight=False)

    res = R.sweep(data, cfg, lambdas, settings, key=key, progress=progress, keep_models=True,
                  on_evaluated=evaluated)
  runs = res["runs"]
  for r in runs:
    if r["dead_concepts"]:
      con.print(f"[bold yellow]lambda={r['lambda']:g}: {len(r['dead_concepts'])} of "
                f"{len(r['concept_variance'])} concepts are dead (test variance <= "
                f"{R.DEAD_VARIANCE:g}): {r['dead_concepts']}")

  posthoc, bb = {}, None
  if args.posthoc:
    bb_epochs = args.blackbox_epochs if args.blackbox_epochs is not None else (
        3 if len(data.input_shape) == 3 else 30)
    name, fn, bb_acc = R.train_blackbox(data, epochs=bb_epochs, seed=args.seed)
    con.print(f"black box {name} (CE, {bb_epochs} epochs): test accuracy {bb_acc:.4f}")
    with _common.Progress("post-hoc stability", len(R.POSTHOC), unit=" methods",
                          con=con) as prog:
      posthoc = R.evaluate_posthoc(fn, data, settings, key=jax.random.fold_in(key, 999),
                                   progress=lambda n: prog.advance(1, info=n))
    bb = {"model": name, "epochs": bb_epochs, "test_accuracy": bb_acc}

  os.makedirs(args.out, exist_ok=True)
  lam_fig = args.explain_lambda if args.explain_lambda is not None else lambdas[0]
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
    feats = (list(data.feature_names) if data.feature_names is not None
             else [f"x{j}" for j in range(data.input_shape[0])])
    names = (feats + ["bias"])[:h.shape[1]] if h.shape[1] >= len(feats) else None
  figures["explanation"] = F.theta_h_bars(
      x_all[i], rel, h[i], os.path.join(args.out, "explanation.png"), names=names,
      title=f"test example 0: label {data.y_test[i]}, predicted {pred[i]} "
            f"(lambda={lam_fig:g})")
  figures["training"] = F.training_diagnostics(
      {f"lambda={r['lambda']:g}": r["history"] for r in runs},
      os.path.join(args.out, "training.png"), title=f"SENN training on {data.name}")
  figures["tradeoff"] = F.tradeoff_plot(
      lambdas, {"test accuracy": [r["test_accuracy"] for r in runs],
                "stability (theta vs h), lower=better": [r["stability"] for r in runs],
                "stability (theta vs x), lower=better": [r["stability_vs_input"] for r in runs],
                "faithfulness, higher=better": [r["faithfulness"] for r in runs]},
      os.path.join(args.out, "tradeoff.png"), baselines=posthoc, title=f"SENN on {data.name}")

  summary = {"dataset": data.name, "source": data.source, "config": cfg.__dict__,
             "eval_settings": dict(settings.__dict__,
                                   epsilon=settings.epsilon(data.input_shape)),
             "runs": runs, "posthoc": posthoc, "blackbox": bb, "figures": figures,
             "explained_lambda": lam_fig, "dead_variance_threshold": R.DEAD_VARIANCE}
  path = _common.write_json(os.path.join(args.out, "senn_report.json"), summary)
  rows = [[f"{r['lambda']:g}", r["test_accuracy"], _iqr(r["stability"]),
           _iqr(r["stability_vs_input"]), _iqr(r["faithfulness"]), r["reconstruction"],
           float(np.min(r["concept_variance"])),
           f"{len(r['dead_concepts'])}/{len(r['concept_variance'])}"] for r in runs]
  rows += [[f"post-hoc {k}", bb["test_accuracy"], None, _iqr(v), None, None, None, None]
           for k, v in posthoc.items()]
  _common.print_table(
      f"SENN on {data.name} ({settings.num_eval} test points; stability and faithfulness as "
      "median [25%, 75%])",
      ["lambda", "test acc", "stability theta/h", "stability theta/x", "faithfulness",
       "recon MSE", "min concept var", "dead concepts"], rows, con=con)
  con.print(f"wrote {path} and {', '.join(figures.values())}")
  return 0
