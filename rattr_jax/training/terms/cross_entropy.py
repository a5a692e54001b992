"""Cross-entropy of the clean batch: the classification loss of every objective."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from rattr_jax.training._term import register_term, Term
from rattr_jax.training._terms import LossTerm


def cross_entropy(logits, y):
  """Per-example softmax cross-entropy ``[B]`` with integer labels."""
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, y)


@register_term
class CrossEntropy(Term):
  """Mean softmax cross-entropy of the clean logits, times ``weight``."""

  name = "ce"
  weight_field = "weight"

  weight: float = 1.0

  def loss(self, ctx, batch, key):
    del key
    return jnp.mean(cross_entropy(ctx.logits, batch.y)), {}


def cross_entropy_term(weight: float = 1.0) -> LossTerm:
  """The engine `LossTerm` of `CrossEntropy` (name ``"ce"``)."""
  return CrossEntropy(weight=weight).loss_term()
