"""Robust-training engine: one trainer, objectives built from registered terms.

* A training objective is a tuple of `Term`\\ s (`rattr_jax.training.terms`,
  one file each): cross-entropy, gradient alignment, Hessian / input-gradient
  / activation-sensitivity penalties, FGSM / PGD / TRADES adversarial
  training, or your own (`register_term`). `method_terms(name)` gives the
  named objectives of the papers.
* `make_train_step(model, optimizer, terms)`: one compiled, buffer-donating
  step (and a fused multi-step `lax.scan`) from an NNX model, an optax
  optimizer and the terms; data parallel over a device mesh.
* `train(config)`: epochs with a rich progress bar, evaluation, LR schedules,
  gradient clipping, orbax checkpoints (latest + best), exact resume and a
  clean stop on NaN. `fit` is the same engine without files or evaluation.
* `TrainConfig` / `OptimizerConfig` and `preset(name)`.
"""

from rattr_jax.training._config import method_terms
from rattr_jax.training._config import METHODS
from rattr_jax.training._config import objective_name
from rattr_jax.training._config import OptimizerConfig
from rattr_jax.training._config import preset
from rattr_jax.training._config import PRESETS
from rattr_jax.training._config import TrainConfig
from rattr_jax.training._config import validate
from rattr_jax.training._engine import default_conv_impls
from rattr_jax.training._engine import default_mesh
from rattr_jax.training._engine import make_optimizer
from rattr_jax.training._engine import make_train_step
from rattr_jax.training._engine import TrainState
from rattr_jax.training._engine import TrainStep
from rattr_jax.training._fit import fit
from rattr_jax.training._loop import MODEL_BUILDERS
from rattr_jax.training._loop import register_model
from rattr_jax.training._loop import resolve_terms
from rattr_jax.training._loop import train
from rattr_jax.training._loop import TrainResult
from rattr_jax.training._multi import data_orders
from rattr_jax.training._multi import ManyResult
from rattr_jax.training._multi import train_many
from rattr_jax.training._term import check_term
from rattr_jax.training._term import fields_of
from rattr_jax.training._term import make_term
from rattr_jax.training._term import merge_terms
from rattr_jax.training._term import parse_term
from rattr_jax.training._term import register_term
from rattr_jax.training._term import Term
from rattr_jax.training._term import term_from_dict
from rattr_jax.training._term import TERMS
from rattr_jax.training._term import TermSetup
from rattr_jax.training._term import with_params
from rattr_jax.training._terms import Batch
from rattr_jax.training._terms import LossTerm
from rattr_jax.training._terms import TermContext
from rattr_jax.training.terms import ActivationSensitivity
from rattr_jax.training.terms import CrossEntropy
from rattr_jax.training.terms import FGSM
from rattr_jax.training.terms import GradientAlignment
from rattr_jax.training.terms import HessianNorm
from rattr_jax.training.terms import InputGradientNorm
from rattr_jax.training.terms import PGD
from rattr_jax.training.terms import TRADES
from rattr_jax.training.terms.cross_entropy import cross_entropy_term

__all__ = [
    "method_terms", "METHODS", "objective_name", "OptimizerConfig", "preset", "PRESETS",
    "TrainConfig", "validate", "default_conv_impls", "default_mesh", "make_optimizer",
    "make_train_step", "TrainState", "TrainStep", "fit", "MODEL_BUILDERS", "register_model",
    "resolve_terms", "train", "TrainResult", "data_orders", "ManyResult", "train_many",
    "check_term", "fields_of", "make_term", "merge_terms", "parse_term", "register_term", "Term",
    "term_from_dict", "TERMS", "TermSetup", "with_params", "Batch", "LossTerm", "TermContext",
    "ActivationSensitivity", "CrossEntropy", "FGSM", "GradientAlignment", "HessianNorm",
    "InputGradientNorm", "PGD", "TRADES", "cross_entropy_term",
]
