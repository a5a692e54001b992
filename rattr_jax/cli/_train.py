"""``rattr train``: robust training with checkpoints, a JSON log and a PNG of the curves.

The objective is a list of terms (`rattr_jax.training.terms`): ``--method``
picks a named one, ``--term NAME:field=value,...`` sets a term's
hyper-parameters (adding the term when the objective lacks it), and the flat
flags (``--epsilon``, ``--lam``, ...) set that field on every term that has it.

Example::

  rattr train --model cnn --method gradient_alignment --epochs 3 --out runs/aga
  rattr train --term gradient_alignment:epsilon=4/255,lambda_cos=1 --out runs/aga2
  rattr train --preset aga_cifar_lenet --epochs 10 --out runs/lenet   # CIFAR LeNet
  rattr train ... --out runs/aga --resume                             # after a kill
  rattr train --method pgd --epsilon 8/255 --out runs/pgd             # radii in input units
"""

from __future__ import annotations

import argparse
import os
import sys

from rattr_jax.cli import _checks
from rattr_jax.cli import _common

# Kept here (not imported from rattr_jax.training) so that `rattr --help` does not
# import JAX; tests/test_cli_args.py checks that they equal the library's.
METHODS = ("ce", "gradient_alignment", "hessian_norm", "activation_sensitivity",
           "input_gradient_norm", "fgsm", "pgd", "trades")
PRESETS = ("aga_cifar_lenet", "aga_cifar_resnet18", "fast_cpu", "hessian_cifar_lenet",
           "hessian_cifar_resnet18", "pgd_cifar_lenet")
MODELS = ("mlp", "cnn", "lenet", "resnet18", "senn")
ADVERSARIAL = ("fgsm", "pgd", "trades")
#: Test examples on which adversarially trained models are attacked after training.
ROBUST_EVAL = 1000

_FIELDS = (
    # (cli dest, config field)
    ("model", "model"), ("dataset", "dataset"), ("epochs", "epochs"),
    ("batch_size", "batch_size"), ("seed", "seed"), ("activation", "activation"),
    ("max_train", "max_train"), ("max_test", "max_test"),
    ("val_fraction", "val_fraction"), ("data_dir", "data_dir"), ("lazy_data", "lazy_data"),
    ("steps_per_call", "steps_per_call"),
    ("lr", "optimizer.learning_rate"), ("optimizer", "optimizer.name"),
    ("weight_decay", "optimizer.weight_decay"), ("schedule", "optimizer.schedule"),
    ("milestones", "optimizer.milestones"), ("clip_norm", "optimizer.clip_norm"),
)
#: Flat hyper-parameter flags: each sets the field of that name on every term of the
#: objective that has one (`rattr_jax.training.with_params`).
_PARAMS = ("epsilon", "lam", "lambda_l2", "lambda_cos", "perturbation", "num_steps",
           "step_size", "beta", "form", "num_samples", "sensitivity_perturbation", "layers")


def register(subparsers):
  C = _checks
  p = subparsers.add_parser(
      "train", help="train a classifier with an explanation-robustness method",
      description="Train with CE, gradient alignment, Hessian/input-gradient/activation-"
                  "sensitivity regularizers or adversarial training. Writes orbax "
                  "checkpoints, log.json (one entry per epoch) and curves.png to --out. "
                  "Radii (--epsilon, --step-size) are in input units (inputs lie in [0, 1]); "
                  "fractions such as 8/255 are accepted.")
  p.add_argument("--out", required=True, help="output directory (new, or an earlier run's "
                 "with --resume)")
  p.add_argument("--preset", default=None, type=C.choice(PRESETS),
                 help=f"settings to start from, one of {', '.join(PRESETS)} (default: "
                      "fast_cpu, the embedded-MNIST CNN)")
  p.add_argument("--method", default=None, type=C.choice(METHODS),
                 help=f"objective, one of {', '.join(METHODS)} (default: the preset's)")
  p.add_argument("--term", action="append", default=None, metavar="NAME[:FIELD=VALUE,...]",
                 help="a term of the objective with its hyper-parameters, e.g. "
                      "gradient_alignment:epsilon=4/255,lambda_cos=1 (repeatable; a term the "
                      "objective lacks is added; layers as fc1+fc2; fractions accepted)")
  p.add_argument("--model", default=None, type=C.choice(MODELS),
                 help=f"zoo model, one of {', '.join(MODELS)}")
  p.add_argument("--dataset", default=None, type=C.choice(C.DATASETS),
                 help=f"one of {', '.join(C.DATASETS)}")
  p.add_argument("--data-dir", dest="data_dir", default=None,
                 help="existing directory with local .npz copies")
  p.add_argument("--lazy-data", dest="lazy_data", default=None,
                 action=argparse.BooleanOptionalAction,
                 help="memory-map the local .npz dataset and read only the rows each process "
                      "uses (default: on when the job has several processes)")
  p.add_argument("--epochs", type=C.positive_int, default=None)
  p.add_argument("--batch-size", dest="batch_size", type=C.positive_int, default=None)
  p.add_argument("--seed", type=C.seed, default=None, help=f"0..{C.MAX_SEED}")
  p.add_argument("--activation", default=None, type=C.activation,
                 help="relu, tanh, identity, softplus or softplus:BETA (BETA > 0)")
  p.add_argument("--max-train", dest="max_train", type=C.positive_int, default=None)
  p.add_argument("--max-test", dest="max_test", type=C.positive_int, default=None)
  p.add_argument("--val-fraction", dest="val_fraction", type=C.fraction, default=None)
  p.add_argument("--steps-per-call", dest="steps_per_call", type=C.positive_int, default=None)
  p.add_argument("--lr", type=C.positive_float, default=None)
  p.add_argument("--optimizer", default=None, type=C.choice(("adam", "adamw", "sgd")),
                 help="adam, adamw or sgd")
  p.add_argument("--weight-decay", dest="weight_decay", type=C.nonneg_float, default=None)
  p.add_argument("--schedule", default=None, type=C.choice(("constant", "multistep", "cosine")),
                 help="constant, multistep or cosine")
  p.add_argument("--milestones", default=None, type=C.int_list,
                 help="comma-separated epochs (multistep), e.g. 100,150")
  p.add_argument("--clip-norm", dest="clip_norm", type=C.positive_float, default=None)
  p.add_argument("--epsilon", type=C.epsilon, default=None,
                 help="radius in input units, e.g. 0.1 or 8/255")
  p.add_argument("--lam", type=C.nonneg_float, default=None,
                 help="weight of the Hessian / input-gradient / activation-sensitivity term")
  p.add_argument("--lambda-l2", dest="lambda_l2", type=C.nonneg_float, default=None)
  p.add_argument("--lambda-cos", dest="lambda_cos", type=C.nonneg_float, default=None)
  p.add_argument("--perturbation", default=None,
                 type=C.choice(("uniform", "gaussian", "grad_sign")),
                 help="gradient-alignment delta: uniform, gaussian or grad_sign")
  p.add_argument("--num-steps", dest="num_steps", type=C.positive_int, default=None)
  p.add_argument("--step-size", dest="step_size", type=C.step_size, default=None,
                 help="attack step in input units, e.g. 2/255")
  p.add_argument("--beta", type=C.nonneg_float, default=None, help="TRADES beta")
  p.add_argument("--layers", default=None, type=C.name_list,
                 help="comma-separated layer names (activation sensitivity)")
  p.add_argument("--form", default=None, type=C.choice(("perturbation", "jacobian")),
                 help="activation-sensitivity form: perturbation or jacobian")
  p.add_argument("--sensitivity-perturbation", dest="sensitivity_perturbation", default=None,
                 type=C.choice(("uniform", "gaussian", "fgsm", "pgd")),
                 help="activation-sensitivity delta: uniform, gaussian, fgsm or pgd")
  p.add_argument("--num-samples", dest="num_samples", type=C.positive_int, default=None)
  p.add_argument("--neuron-weights", dest="neuron_weights", action="store_true",
                 help="per-neuron activation-sensitivity weights, refreshed each epoch")
  p.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
  p.add_argument("--no-progress", dest="progress", action="store_false")
  _common.add_multihost_args(p)
  p.set_defaults(func=run)
  return p


def config_from_args(args: argparse.Namespace):
  """The `TrainConfig` described by parsed ``rattr train`` arguments."""
  import dataclasses

  from rattr_jax import training
  name = args.preset or "fast_cpu"
  overrides = {field: getattr(args, dest) for dest, field in _FIELDS
               if getattr(args, dest, None) is not None}
  cfg = training.preset(name, method=args.method, **overrides)
  terms = cfg.terms
  if cfg.model == "senn" and args.method is None:
    terms = (training.make_term("senn"),)  # SENN's own objective (registered by `check`)
  params = {dest: getattr(args, dest) for dest in _PARAMS if getattr(args, dest, None) is not None}
  if getattr(args, "neuron_weights", False):
    params["neuron_weights"] = True

  def add_terms(terms):
    for spec in getattr(args, "term", None) or ():
      try:
        term_name, term_params = training.parse_term(spec)
        terms = training.merge_terms(terms, term_name, term_params)
      except ValueError as e:
        raise ValueError(f"--term {spec}: {e}") from None
    return terms

  # --term first (so flat flags reach the terms it adds), flat flags, then --term again:
  # a field given in --term wins over the flat flag of the same name.
  terms = add_terms(terms)
  for dest, value in params.items():
    try:
      terms = training.with_params(terms, **{dest: value})
    except ValueError as e:
      raise ValueError(f"--{dest.replace('_', '-')}: {e}") from None
  terms = add_terms(terms)
  return training.validate(dataclasses.replace(cfg, terms=terms))


def has_checkpoint(out_dir: str) -> bool:
  """Whether ``out_dir`` holds a finished training checkpoint (``checkpoints/latest/<step>``)."""
  latest = os.path.join(out_dir, "checkpoints", "latest")
  try:
    return any(e.isdigit() for e in os.listdir(latest))
  except OSError:
    return False


def check(args) -> None:
  """Paths and the config, before data is loaded or anything is compiled."""
  _common.check_multihost_args(args)
  if args.data_dir is not None:
    _checks.existing_dir(args.data_dir, "--data-dir")
  _checks.out_dir(args.out)
  if has_checkpoint(args.out) and not args.resume:
    raise _checks.CLIError(f"--out {args.out!r} already holds a training run; pass --resume to "
                           "continue it, or choose another --out.")
  if args.resume and not has_checkpoint(args.out):
    print(f"rattr train: note: --resume: no checkpoint in {args.out!r}; training starts from "
          "scratch.", file=sys.stderr)
    args.resume = False
  if args.model == "senn":
    from rattr_jax.senn import register_senn_training
    register_senn_training()
  try:
    args._config = config_from_args(args)
  except ValueError as e:
    raise _checks.CLIError(_flagged(str(e))) from None


def _adversarial(config):
  """The objective's adversarial-training term (FGSM, PGD, TRADES), or ``None``."""
  return next((t for t in config.terms if t.name in ADVERSARIAL), None)


def _flagged(message: str) -> str:
  """Rewrites a config error's field name (```method.epsilon```) into its flag."""
  for dest, field in _FIELDS:
    for name in (f"`{field}`", f"`{field.split('.')[-1]}`"):
      if name in message:
        return message.replace(name, "--" + dest.replace("_", "-"), 1)
  return message


def run(args: argparse.Namespace) -> int:
  from rattr_jax import distributed
  distributed.initialize_from_args(args)  # before any JAX computation
  from rattr_jax.cli import _common
  _common.configure_cpu()
  import jax

  from rattr_jax import training
  config = getattr(args, "_config", None) or config_from_args(args)
  con = _common.console()
  devices = jax.devices()
  mesh = training.default_mesh(config.data_parallel)
  n_dev = 1 if mesh is None else mesh.devices.size
  platform = devices[0].platform
  radius = next((t for t in config.terms if t.name in ADVERSARIAL + ("gradient_alignment",)),
                None)
  con.print(f"[bold]rattr train[/]: {config.model} on {config.dataset}, objective "
            f"{config.objective}"
            + (f" (epsilon {radius.epsilon:.4g} = {radius.epsilon * 255:.3g}/255)"
               if radius is not None else "")
            + f", {config.epochs} epochs -> {args.out}")
  con.print(f"devices: {len(devices)} x {platform}; data-parallel: "
            f"{'yes, over ' + str(n_dev) + ' devices' if n_dev > 1 else 'no'}; batch "
            f"{config.batch_size // n_dev} per device, effective batch {config.batch_size}")
  result = training.train(config, out_dir=args.out, resume=args.resume, progress=args.progress)
  if result.history:
    has_val = "val_accuracy" in result.history[0]
    cols = ["epoch", "train loss", "train acc"] + (["val acc"] if has_val else []) + [
        "test acc", "seconds"]
    rows = [[h["epoch"], h["train_loss"], h["train_acc"]] +
            ([h.get("val_accuracy")] if has_val else []) + [h.get("test_accuracy"), h["seconds"]]
            for h in result.history]
    _common.print_table(f"{config.objective} on {config.dataset}", cols, rows, con=con)
  if result.status != "completed":
    if not args.progress:  # with progress the loop has printed it
      print(f"rattr train: {result.message}", file=sys.stderr)
    written = [p for p in ("log.json", "curves.png") if os.path.exists(os.path.join(args.out, p))]
    if written:
      con.print(f"kept in {args.out}: {', '.join(written)}"
                + (", checkpoints/" if has_checkpoint(args.out) else ""))
    return 3
  adv = _adversarial(config)
  if adv is not None:
    robust = _robust_accuracy(result.model, config, args)
    con.print(f"robust test accuracy (PGD-{robust['num_steps']}, epsilon {adv.epsilon:.4g} = "
              f"{adv.epsilon * 255:.3g}/255, {robust['num_examples']} test examples): "
              f"[bold]{robust['robust_accuracy']:.4f}[/] (clean {robust['clean_accuracy']:.4f})")
    _common.write_json(os.path.join(args.out, "robust_accuracy.json"), robust)
  con.print(result.message)
  con.print(f"checkpoints: {args.out}/checkpoints   log: {args.out}/log.json   "
            f"curves: {args.out}/curves.png")
  return 0


def _robust_accuracy(model, config, args, *, num_steps: int = 10, chunk: int = 250) -> dict:
  """Accuracy under PGD at the training epsilon on the first `ROBUST_EVAL` test examples."""
  import jax
  import jax.numpy as jnp
  from rattr_jax import models, regularizers
  from rattr_jax.cli import _common
  from rattr_jax.data import load_dataset
  data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                      max_test=min(ROBUST_EVAL, config.max_test or ROBUST_EVAL),
                      lazy=config.lazy_data)
  fn = models.as_fn(model)
  eps = float(_adversarial(config).epsilon)
  x, y = data.x_test, data.y_test
  key = jax.random.key(config.seed + 1)
  clean = robust = 0
  with _common.Progress("robust test accuracy", len(x), unit=" examples") as prog:
    for s in range(0, len(x), chunk):
      xc, yc = jnp.asarray(x[s:s + chunk]), jnp.asarray(y[s:s + chunk])
      x_adv = regularizers.pgd_adversary(fn, xc, yc, key=jax.random.fold_in(key, s),
                                         epsilon=eps, step_size=2.5 * eps / num_steps,
                                         num_steps=num_steps)
      clean += int(jnp.sum(jnp.argmax(fn(xc), -1) == yc))
      robust += int(jnp.sum(jnp.argmax(fn(x_adv), -1) == yc))
      prog.advance(len(xc))
  n = len(x)
  return {"epsilon": eps, "num_steps": num_steps, "step_size": 2.5 * eps / num_steps,
          "num_examples": int(n), "clean_accuracy": clean / n, "robust_accuracy": robust / n}
