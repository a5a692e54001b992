"""Loss terms: the runtime interface of the training engine.

The configurable, registered terms (`rattr_jax.training.Term`, one file each in
`rattr_jax.training.terms`) each become one `LossTerm`, whose ``fn(ctx, batch, key)`` returns
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
from flax import nnx


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
    name: the name of the term being evaluated (`own_aux` is its entry of ``aux``).
    features: ``{layer: [B, ...]}`` hidden outputs of the clean pass, for the
      layers the objective's terms list in ``clean_layers``.
  """

  params: Any
  rest: Any
  graphdef_train: Any
  graphdef_eval: Any
  logits: jax.Array
  step: jax.Array
  aux: dict
  name: str = ""
  features: Any = dataclasses.field(default_factory=dict)

  @property
  def own_aux(self) -> Any:
    """This term's refreshed data (``aux[name]``), or ``None``."""
    return self.aux.get(self.name)

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
    clean_layers: hidden layers whose outputs the term reads from the clean
      pass (``ctx.features[layer]``); the engine captures them in the pass
      that computes ``ctx.logits``, so the term shares its forward and
      backward work.
  """

  name: str
  fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  weight: float = 1.0
  refresh: Callable[..., Any] | None = None
  clean_layers: tuple[str, ...] = ()

  def __post_init__(self):
    if not isinstance(self.weight, (int, float)) or isinstance(self.weight, bool) or \
        not self.weight >= 0:
      raise ValueError(f"LossTerm {self.name!r}: `weight` must be a non-negative number; "
                       f"got {self.weight!r}.")
