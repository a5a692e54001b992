"""Splitting a model into penultimate features and its last (linear) layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from flax import nnx


class LastLayer(NamedTuple):
  """A classifier as ``fn(x) = features_fn(x) @ kernel + bias``.

  Attributes:
    features_fn: ``[B, *F] -> [B, D]`` penultimate features (inference mode).
    kernel: ``[D, C]`` last-layer weights.
    bias: ``[C]`` last-layer bias.
  """

  features_fn: Callable[[jax.Array], jax.Array]
  kernel: jax.Array
  bias: jax.Array

  def logits(self, x: jax.Array) -> jax.Array:
    """The model's logits ``[B, C]``."""
    return self.features_fn(x) @ self.kernel + self.bias


class _Identity(nnx.Module):
  def __call__(self, x):
    return x


def last_layer(model: nnx.Module, *, name: str | None = None) -> LastLayer:
  """Splits an NNX classifier into features and its final `nnx.Linear`.

  Args:
    model: an NNX module whose output layer is an `nnx.Linear` attribute that
      is applied last (true for every rattr_jax zoo model).
    name: attribute name of the output layer. Default: the last top-level
      `nnx.Linear` attribute in definition order (``fc2`` of the CNNs,
      ``head`` of the MLP and ResNet).

  Returns:
    `LastLayer`; ``last.logits(x)`` equals ``rattr_jax.models.as_fn(model)(x)``.

  Raises:
    ValueError: no such `nnx.Linear` attribute.
  """
  from rattr_jax.models import view as model_view
  if name is None:
    linear = [k for k, v in vars(model).items() if isinstance(v, nnx.Linear)]
    if not linear:
      raise ValueError("`model` has no top-level nnx.Linear attribute; pass `name`.")
    name = linear[-1]
  layer = getattr(model, name, None)
  if not isinstance(layer, nnx.Linear):
    raise ValueError(f"`name` {name!r} is not an nnx.Linear attribute of the model.")
  if layer.bias is None:
    raise ValueError(f"the output layer {name!r} must have a bias.")
  view = model_view(model)
  setattr(view, name, _Identity())
  graphdef, state = nnx.split(view)
  features_fn = jax.tree_util.Partial(lambda st, x: nnx.merge(graphdef, st)(x), state)
  return LastLayer(features_fn, layer.kernel[...], layer.bias[...])
