"""Loss terms: the general interface of the training engine, and one per method.

A loss term is a `LossTerm` whose ``fn(ctx, batch, key)`` returns
``(value, metrics)``: a scalar and a dict of scalar diagnostics. The engine
minimises ``sum_i weight_i * value_i``. ``ctx`` is a `TermContext` built
inside the traced loss from the *traced* parameters, so anything a term
computes from it is differentiated with respect to the parameters.

BatchNorm policy (models with batch statistics):

* the engine runs the clean batch once in training mode (``ctx.logits``); that
  pass, and only that pass, updates the running statistics;
* regularizer passes (``ctx.fn``: ``g(x)``, ``g(x + delta)``, HVPs, hidden
  features, ``fn(x_adv)``) run in training mode too, normalising with the
  statistics of the batch they see, like the PyTorch reference, but their
  statistics updates are discarded (the reference updates them twice per step);
* inner attacks (FGSM, PGD, TRADES, adversarial sensitivity) run on
  ``ctx.eval_fn``, the model in inference mode with its running statistics.

For models without BatchNorm the three functions are the same network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rattr_jax.models import _features
from rattr_jax.regularizers import _activation_sensitivity as _as
from rattr_jax.regularizers import _adversarial as _adv
from rattr_jax.regularizers import _common
from rattr_jax.regularizers import _gradient_alignment as _ga
from rattr_jax.regularizers import _hessian_norm as _hn
from rattr_jax.regularizers import _input_gradient_norm as _ig


class Batch(NamedTuple):
  """A training batch: ``x [B, *F]`` and integer labels ``y [B]``."""

  x: jax.Array
  y: jax.Array


def _fresh(tree):
  return jax.tree_util.tree_map(lambda a: a, tree)


@dataclasses.dataclass(frozen=True)
class TermContext:
  """What a loss term sees inside the traced loss.

  Attributes:
    params: the (traced) trainable parameters, an `nnx.State`.
    rest: non-trainable state before this step (batch statistics, ...).
    graphdef_train, graphdef_eval: the model's graph in training / inference mode.
    logits: ``[B, C]`` logits of the clean batch (training mode; the pass that
      updates batch statistics).
    step: the global step (traced int).
    aux: per-term auxiliary data refreshed each epoch (``aux[term.name]``).
  """

  params: Any
  rest: Any
  graphdef_train: Any
  graphdef_eval: Any
  logits: jax.Array
  step: jax.Array
  aux: dict

  def model(self, train: bool = True) -> nnx.Module:
    """A fresh NNX module on the traced parameters (its state changes are discarded)."""
    # Fresh Variable objects at the current trace level: a training-mode
    # BatchNorm mutates its statistics, which NNX only allows on variables
    # created in the same trace (e.g. inside an inner `jax.grad`).
    return nnx.merge(self.graphdef_train if train else self.graphdef_eval, self.params,
                     _fresh(self.rest))

  def fn(self, x: jax.Array) -> jax.Array:
    """Logits in training mode (batch statistics of ``x``; no statistics update)."""
    return self.model(True)(x)

  def eval_fn(self, x: jax.Array) -> jax.Array:
    """Logits in inference mode (running statistics): the function inner attacks use."""
    return self.model(False)(x)


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """A weighted term of the training objective.

  Attributes:
    name: metric name (unique within an objective).
    fn: ``fn(ctx: TermContext, batch: Batch, key) -> (scalar, dict[str, scalar])``.
    weight: multiplier in the total loss (>= 0).
    refresh: optional ``refresh(model, x, y, key) -> pytree``, run (jitted) at
      the start of every epoch on a fixed-size batch of training data with
      the current inference-mode model; the result is ``ctx.aux[name]``.
  """

  name: str
  fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  weight: float = 1.0
  refresh: Callable[..., Any] | None = None

  def __post_init__(self):
    if not isinstance(self.weight, (int, float)) or isinstance(self.weight, bool) or \
        not self.weight >= 0:
      raise ValueError(f"LossTerm {self.name!r}: `weight` must be a non-negative number; "
                       f"got {self.weight!r}.")


# --------------------------------------------------------------------------- terms


def cross_entropy_term(weight: float = 1.0) -> LossTerm:
  """Mean softmax cross-entropy of the clean logits."""
  def fn(ctx, batch, key):
    del key
    return jnp.mean(_common.cross_entropy(ctx.logits, batch.y)), {}
  return LossTerm("ce", fn, weight)


def gradient_alignment_term(*, epsilon, lambda_l2, lambda_cos, perturbation="uniform",
                            stop_gradient_source=True, explainer=None) -> LossTerm:
  """``lambda_l2 * l2 + lambda_cos * cosd`` (weight 1); logs ``ga_l2`` and ``ga_cos``.

  ``explainer``: the explanation aligned (any differentiable explainer,
  `rattr_jax.explainers`); ``None`` is the gradient of the true-class logit.
  """
  def fn(ctx, batch, key):
    terms = _ga.alignment_terms(ctx.fn, batch.x, batch.y, key=key,
                                epsilon=jnp.asarray(epsilon, batch.x.dtype),
                                perturbation=perturbation,
                                stop_gradient_source=stop_gradient_source, explainer=explainer)
    l2, cosd = jnp.mean(terms.l2), jnp.mean(terms.cosd)
    return lambda_l2 * l2 + lambda_cos * cosd, {"ga_l2": l2, "ga_cos": cosd}
  return LossTerm("ga", fn, 1.0)


def hessian_norm_term(*, lam, num_samples=1, mode="reverse_over_reverse") -> LossTerm:
  def fn(ctx, batch, key):
    v = _hn.hessian_norm_values(ctx.fn, batch.x, batch.y, key=key, num_samples=num_samples,
                                mode=mode)
    return jnp.mean(v), {}
  return LossTerm("hessian", fn, lam)


def input_gradient_norm_term(*, lam, of="loss") -> LossTerm:
  def fn(ctx, batch, key):
    del key
    return jnp.mean(_ig.input_gradient_norm_values(ctx.fn, batch.x, batch.y, of=of)), {}
  return LossTerm("igrad", fn, lam)


def activation_sensitivity_term(*, lam, layers, epsilon, form="perturbation",
                                perturbation="uniform", num_steps=5, step_size=None,
                                num_samples=1, num_projections=1, neuron_weights=False,
                                clip=(0.0, 1.0), refresh_size=256) -> LossTerm:
  """Activation sensitivity of ``layers``; optional per-neuron weights refreshed each epoch."""
  layers = tuple(layers)
  lw = (1.0,) * len(layers)
  name = "act_sens"

  def fn(ctx, batch, key):
    feats = _features.feature_fn(ctx.model(True), layers, train=True)
    nw = ctx.aux.get(name) if neuron_weights else None
    v = _as.activation_sensitivity_values(
        feats, ctx.eval_fn, batch.x, batch.y, key=key, form=form, perturbation=perturbation,
        epsilon=jnp.asarray(epsilon, batch.x.dtype), num_steps=num_steps, step_size=step_size,
        num_samples=num_samples, num_projections=num_projections, layer_weights=lw,
        neuron_weights=nw, clip=clip)
    return jnp.mean(v), {}

  refresh = None
  if neuron_weights:
    def refresh(model, x, y, key):
      feats = _features.feature_fn(model, layers)
      return _as.neuron_sensitivity_core(
          feats, _eval_apply(model), x, y, key, jnp.asarray(epsilon, x.dtype), step_size,
          perturbation=perturbation, num_steps=num_steps, clip=clip)
  return LossTerm(name, fn, lam, refresh)


def _eval_apply(model):
  from rattr_jax.models._functional import as_fn
  return as_fn(model)


def fgsm_term(*, epsilon, step_size=None, clip=(0.0, 1.0)) -> LossTerm:
  """Fast AT (Wong et al.): CE at a random-start FGSM point; logs ``adv_acc``."""
  def fn(ctx, batch, key):
    eps = jnp.asarray(epsilon, batch.x.dtype)
    step = 1.25 * eps if step_size is None else step_size
    x_adv = _adv.fgsm_adversary_core(ctx.eval_fn, batch.x, batch.y, key=key, epsilon=eps,
                                     step_size=step, clip=clip)
    logits = ctx.fn(x_adv)
    return jnp.mean(_common.cross_entropy(logits, batch.y)), {"adv_acc": _acc(logits, batch.y)}
  return LossTerm("adv_ce", fn, 1.0)


def pgd_term(*, epsilon, num_steps=10, step_size=None, clip=(0.0, 1.0)) -> LossTerm:
  """PGD-AT (Madry et al.): CE at the PGD point; logs ``adv_acc``."""
  def fn(ctx, batch, key):
    eps = jnp.asarray(epsilon, batch.x.dtype)
    step = 2.5 * eps / num_steps if step_size is None else step_size
    x_adv = _adv.pgd_adversary_core(ctx.eval_fn, batch.x, batch.y, key=key, epsilon=eps,
                                    step_size=step, num_steps=num_steps, clip=clip)
    logits = ctx.fn(x_adv)
    return jnp.mean(_common.cross_entropy(logits, batch.y)), {"adv_acc": _acc(logits, batch.y)}
  return LossTerm("adv_ce", fn, 1.0)


def trades_term(*, epsilon, beta=6.0, num_steps=10, step_size=None,
                clip=(0.0, 1.0)) -> LossTerm:
  """The TRADES KL term (weight ``beta``); use with `cross_entropy_term`."""
  def fn(ctx, batch, key):
    eps = jnp.asarray(epsilon, batch.x.dtype)
    step = 2.5 * eps / num_steps if step_size is None else step_size
    x_adv = _adv.trades_adversary_core(ctx.eval_fn, batch.x, key=key, epsilon=eps,
                                       step_size=step, num_steps=num_steps, clip=clip)
    logits = ctx.fn(x_adv)
    return jnp.mean(_adv._kl_rows(ctx.logits, logits)), {"adv_acc": _acc(logits, batch.y)}
  return LossTerm("trades_kl", fn, beta)


def _acc(logits, y):
  return jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))


def method_terms(method, *, hessian_mode: str = "reverse_over_reverse",
                 clip=(0.0, 1.0)) -> list[LossTerm]:
  """The loss terms of a `MethodConfig` (``hessian_mode`` already resolved)."""
  m = method
  name = m.name
  if name == "ce":
    return [cross_entropy_term()]
  if name == "gradient_alignment":
    return [cross_entropy_term(),
            gradient_alignment_term(epsilon=m.epsilon, lambda_l2=m.lambda_l2,
                                    lambda_cos=m.lambda_cos, perturbation=m.perturbation)]
  if name == "hessian_norm":
    return [cross_entropy_term(),
            hessian_norm_term(lam=m.lam, num_samples=m.num_samples, mode=hessian_mode)]
  if name == "input_gradient_norm":
    return [cross_entropy_term(), input_gradient_norm_term(lam=m.lam, of=m.gradient_of)]
  if name == "activation_sensitivity":
    return [cross_entropy_term(),
            activation_sensitivity_term(lam=m.lam, layers=m.layers, epsilon=m.epsilon,
                                        form=m.form, perturbation=m.sensitivity_perturbation,
                                        num_steps=m.num_steps, step_size=m.step_size,
                                        num_samples=m.num_samples,
                                        num_projections=m.num_projections,
                                        neuron_weights=m.neuron_weights, clip=clip)]
  if name == "fgsm":
    return [fgsm_term(epsilon=m.epsilon, step_size=m.step_size, clip=clip)]
  if name == "pgd":
    return [pgd_term(epsilon=m.epsilon, num_steps=m.num_steps, step_size=m.step_size, clip=clip)]
  if name == "trades":
    return [cross_entropy_term(),
            trades_term(epsilon=m.epsilon, beta=m.beta, num_steps=m.num_steps,
                        step_size=m.step_size, clip=clip)]
  raise ValueError(f"Unknown `method` {name!r}.")
