"""SENN aggregators: how relevances ``theta`` and concepts ``h`` make logits."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AGGREGATORS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class Aggregator:
  """The additive aggregator ``g`` of a SENN (a hashable, static setting).

  Both kinds first form the scores ``z_t = sum_i theta_it(x) h_i(x)``
  (`scores`), i.e. ``g`` is a sum, monotone and additively separable in the
  terms ``theta_i h_i`` as the paper requires.

  * ``"softmax"``: one score per class (``T = C``); the logits are the scores
    and the probabilities their softmax.
  * ``"sigmoid"``: binary tasks only (``C = 2``); one score ``z`` (``T = 1``)
    with ``p(y=1|x) = sigmoid(z)``. To keep the library's ``fn(x) -> [B, C]``
    contract, the logits are ``[0, z]``: their softmax is exactly
    ``[1 - sigmoid(z), sigmoid(z)]`` and cross-entropy on them is the binary
    cross-entropy of the original code.

  Attributes:
    kind: ``"softmax"`` or ``"sigmoid"``.
  """

  kind: str = "softmax"

  def __post_init__(self):
    if self.kind not in AGGREGATORS:
      raise ValueError(f"Unknown `aggregator` {self.kind!r}; expected one of "
                       f"{list(AGGREGATORS)}.")

  def num_outputs(self, num_classes: int) -> int:
    """Relevance outputs per concept ``T`` for a ``num_classes`` task."""
    if self.kind == "sigmoid":
      if num_classes != 2:
        raise ValueError("`aggregator`='sigmoid' is for binary tasks; got "
                         f"`num_classes`={num_classes}.")
      return 1
    return num_classes

  def scores(self, theta: jax.Array, h: jax.Array) -> jax.Array:
    """``z [B, T] = sum_i theta [B, k, T] * h [B, k]``."""
    return jnp.einsum("bkt,bk->bt", theta, h)

  def logits(self, scores: jax.Array) -> jax.Array:
    """Scores ``[B, T]`` -> logits ``[B, C]`` (``[0, z]`` for ``sigmoid``)."""
    if self.kind == "sigmoid":
      return jnp.concatenate([jnp.zeros_like(scores), scores], axis=-1)
    return scores

  def __call__(self, theta: jax.Array, h: jax.Array) -> jax.Array:
    """Logits ``[B, C]`` from ``theta [B, k, T]`` and ``h [B, k]``."""
    return self.logits(self.scores(theta, h))

  def output(self, scores: jax.Array) -> jax.Array:
    """The original code's model output: log-softmax, or sigmoid when binary."""
    if self.kind == "sigmoid":
      return jax.nn.sigmoid(scores)
    return jax.nn.log_softmax(scores, axis=-1)

  def class_relevance(self, theta: jax.Array, target: jax.Array) -> jax.Array:
    """Relevances of class ``target [B]`` for each concept: ``[B, k]``.

    For ``sigmoid`` the relevance of class 1 is ``theta`` and of class 0 is
    ``-theta`` (the logits are ``[0, z]``, so ``d(z_1 - z_0) = dz``).
    """
    if self.kind == "sigmoid":
      sign = jnp.where(target == 1, 1.0, -1.0).astype(theta.dtype)
      return theta[:, :, 0] * sign[:, None]
    return jnp.take_along_axis(theta, target[:, None, None], axis=2)[:, :, 0]


def as_aggregator(value: "Aggregator | str") -> Aggregator:
  if isinstance(value, Aggregator):
    return value
  if isinstance(value, str):
    return Aggregator(value)
  raise ValueError(f"`aggregator` must be an Aggregator or a name; got {value!r}.")
