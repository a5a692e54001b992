"""``rattr train``: robust training with checkpoints, a JSON log and a PNG of the curves.

Example::

  rattr train --model cnn --method gradient_alignment --epochs 3 --out runs/aga
  rattr train --preset aga_cifar_lenet --epochs 10 --out runs/lenet   # CIFAR LeNet
  rattr train ... --out runs/aga --resume                             # after a kill
"""

from __future__ import annotations

import argparse

_FIELDS = (
    # (cli dest, config field, type)
    ("model", "model", str), ("dataset", "dataset", str), ("epochs", "epochs", int),
    ("batch_size", "batch_size", int), ("seed", "seed", int), ("activation", "activation", str),
    ("max_train", "max_train", int), ("max_test", "max_test", int),
    ("val_fraction", "val_fraction", float), ("data_dir", "data_dir", str),
    ("steps_per_call", "steps_per_call", int),
    ("lr", "optimizer.learning_rate", float), ("optimizer", "optimizer.name", str),
    ("weight_decay", "optimizer.weight_decay", float), ("schedule", "optimizer.schedule", str),
    ("clip_norm", "optimizer.clip_norm", float),
    ("epsilon", "method.epsilon", float), ("lam", "method.lam", float),
    ("lambda_l2", "method.lambda_l2", float), ("lambda_cos", "method.lambda_cos", float),
    ("perturbation", "method.perturbation", str), ("num_steps", "method.num_steps", int),
    ("step_size", "method.step_size", float), ("beta", "method.beta", float),
    ("form", "method.form", str), ("num_samples", "method.num_samples", int),
    ("sensitivity_perturbation", "method.sensitivity_perturbation", str),
)


def register(subparsers) -> None:
  from rattr_jax.training import METHODS, PRESETS
  p = subparsers.add_parser(
      "train", help="train a classifier with an explanation-robustness method",
      description="Train with CE, gradient alignment, Hessian/input-gradient/activation-"
                  "sensitivity regularizers or adversarial training. Writes orbax "
                  "checkpoints, log.json (one entry per epoch) and curves.png to --out.")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                 help="settings to start from (default: fast_cpu, the embedded-MNIST CNN)")
  p.add_argument("--method", default=None, choices=list(METHODS),
                 help="objective (default: the preset's; fast_cpu uses MNIST-scale settings)")
  p.add_argument("--model", default=None, help="zoo model (mlp, cnn, lenet, resnet18) or a "
                 "registered custom model")
  p.add_argument("--dataset", default=None)
  p.add_argument("--data-dir", dest="data_dir", default=None)
  p.add_argument("--epochs", type=int, default=None)
  p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
  p.add_argument("--seed", type=int, default=None)
  p.add_argument("--activation", default=None, help="relu, softplus:BETA, tanh")
  p.add_argument("--max-train", dest="max_train", type=int, default=None)
  p.add_argument("--max-test", dest="max_test", type=int, default=None)
  p.add_argument("--val-fraction", dest="val_fraction", type=float, default=None)
  p.add_argument("--steps-per-call", dest="steps_per_call", type=int, default=None)
  p.add_argument("--lr", type=float, default=None)
  p.add_argument("--optimizer", default=None, choices=["adam", "adamw", "sgd"])
  p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None)
  p.add_argument("--schedule", default=None, choices=["constant", "multistep", "cosine"])
  p.add_argument("--milestones", default=None, help="comma-separated epochs (multistep)")
  p.add_argument("--clip-norm", dest="clip_norm", type=float, default=None)
  p.add_argument("--epsilon", type=float, default=None)
  p.add_argument("--lam", type=float, default=None,
                 help="weight of the Hessian / input-gradient / activation-sensitivity term")
  p.add_argument("--lambda-l2", dest="lambda_l2", type=float, default=None)
  p.add_argument("--lambda-cos", dest="lambda_cos", type=float, default=None)
  p.add_argument("--perturbation", default=None, help="gradient-alignment delta")
  p.add_argument("--num-steps", dest="num_steps", type=int, default=None)
  p.add_argument("--step-size", dest="step_size", type=float, default=None)
  p.add_argument("--beta", type=float, default=None, help="TRADES beta")
  p.add_argument("--layers", default=None, help="comma-separated layer names "
                 "(activation sensitivity)")
  p.add_argument("--form", default=None, help="activation-sensitivity form")
  p.add_argument("--sensitivity-perturbation", dest="sensitivity_perturbation", default=None)
  p.add_argument("--num-samples", dest="num_samples", type=int, default=None)
  p.add_argument("--neuron-weights", dest="neuron_weights", action="store_true",
                 help="per-neuron activation-sensitivity weights, refreshed each epoch")
  p.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
  p.add_argument("--no-progress", dest="progress", action="store_false")
  p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
  """The `TrainConfig` described by parsed ``rattr train`` arguments."""
  from rattr_jax import training
  name = args.preset or "fast_cpu"
  overrides = {}
  for dest, field, _ in _FIELDS:
    v = getattr(args, dest, None)
    if v is not None:
      overrides[field] = v
  if args.layers is not None:
    overrides["method.layers"] = tuple(s.strip() for s in args.layers.split(",") if s.strip())
  if args.milestones is not None:
    overrides["optimizer.milestones"] = tuple(int(s) for s in args.milestones.split(",") if s)
  if args.neuron_weights:
    overrides["method.neuron_weights"] = True
  return training.preset(name, method=args.method, **overrides)


def run(args: argparse.Namespace) -> int:
  import rattr_jax
  rattr_jax.apply_cpu_training_flag()  # before the first computation; see its docstring
  from rattr_jax import training
  from rattr_jax.cli import _common
  config = config_from_args(args)
  con = _common.console()
  m = config.method
  con.print(f"[bold]rattr train[/]: {config.model} on {config.dataset}, method {m.name}, "
            f"{config.epochs} epochs, batch {config.batch_size} -> {args.out}")
  result = training.train(config, out_dir=args.out, resume=args.resume, progress=args.progress)
  has_val = bool(result.history) and "val_accuracy" in result.history[0]
  cols = ["epoch", "train loss", "train acc"] + (["val acc"] if has_val else []) + [
      "test acc", "seconds"]
  rows = [[h["epoch"], h["train_loss"], h["train_acc"]] +
          ([h["val_accuracy"]] if has_val else []) + [h["test_accuracy"], h["seconds"]]
          for h in result.history]
  _common.print_table(f"{m.name}: {result.message}", cols, rows)
  con.print(f"checkpoints: {args.out}/checkpoints   log: {args.out}/log.json   "
            f"curves: {args.out}/curves.png")
  if result.status != "completed":
    con.print(f"[bold red]{result.message}")
    return 3
  return 0
