"""Robust-training engine: a jitted train step, loss terms, configs with presets, the loop.

* `make_train_step(model, optimizer, terms)`: one compiled, buffer-donating
  step (and a fused multi-step `lax.scan`) from an NNX model, an optax
  optimizer and weighted `LossTerm`\\ s; data parallel over a device mesh.
* `train(config)`: epochs with a rich progress bar, evaluation, LR schedules,
  gradient clipping, orbax checkpoints (latest + best), exact resume and a
  clean stop on NaN.
* `TrainConfig` / `MethodConfig` / `OptimizerConfig` and `preset(name)`.
"""

from rattr_jax.training._config import fast_cpu_method
from rattr_jax.training._config import MethodConfig
from rattr_jax.training._config import METHODS
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
from rattr_jax.training._multi import data_orders
from rattr_jax.training._multi import ManyResult
from rattr_jax.training._multi import train_many
from rattr_jax.training._loop import MODEL_BUILDERS
from rattr_jax.training._loop import register_model
from rattr_jax.training._loop import train
from rattr_jax.training._loop import TrainResult
from rattr_jax.training._terms import activation_sensitivity_term
from rattr_jax.training._terms import Batch
from rattr_jax.training._terms import cross_entropy_term
from rattr_jax.training._terms import fgsm_term
from rattr_jax.training._terms import gradient_alignment_term
from rattr_jax.training._terms import hessian_norm_term
from rattr_jax.training._terms import input_gradient_norm_term
from rattr_jax.training._terms import LossTerm
from rattr_jax.training._terms import method_terms
from rattr_jax.training._terms import pgd_term
from rattr_jax.training._terms import TermContext
from rattr_jax.training._terms import trades_term

__all__ = [
    "data_orders", "ManyResult", "train_many",
    "fast_cpu_method", "MethodConfig", "METHODS", "OptimizerConfig", "preset", "PRESETS",
    "TrainConfig", "validate", "default_conv_impls", "default_mesh", "make_optimizer", "make_train_step",
    "TrainState", "TrainStep", "MODEL_BUILDERS", "register_model", "train", "TrainResult", "activation_sensitivity_term", "Batch",
    "cross_entropy_term", "fgsm_term", "gradient_alignment_term", "hessian_norm_term",
    "input_gradient_norm_term", "LossTerm", "method_terms", "pgd_term", "TermContext",
    "trades_term",
]
