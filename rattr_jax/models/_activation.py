"""Activations as a model setting: ReLU or softplus-beta."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

ACTIVATIONS = ("relu", "softplus", "tanh", "identity")


@dataclasses.dataclass(frozen=True)
class Activation:
  """A hashable activation setting, stored as a static attribute on modules.

  ``softplus`` with ``beta`` is ``log(1 + exp(beta z)) / beta``, which tends to
  ReLU as ``beta -> inf`` (Dombrowski et al., 2019). It is the smooth surrogate
  used to attack and to explain ReLU networks.

  Attributes:
    name: ``relu``, ``softplus``, ``tanh`` or ``identity``.
    beta: softplus sharpness (ignored for other activations).
  """

  name: str = "relu"
  beta: float = 1.0

  def __post_init__(self):
    if self.name not in ACTIVATIONS:
      raise ValueError(f"Unknown activation `name` {self.name!r}; expected one of "
                       f"{list(ACTIVATIONS)}.")
    if not self.beta > 0:
      raise ValueError(f"`beta` must be positive; got {self.beta}.")

  def __call__(self, z: jax.Array) -> jax.Array:
    if self.name == "relu":
      return jax.nn.relu(z)
    if self.name == "softplus":
      return jax.nn.softplus(self.beta * z) / self.beta
    if self.name == "tanh":
      return jnp.tanh(z)
    return z

  @classmethod
  def softplus(cls, beta: float = 10.0) -> "Activation":
    return cls("softplus", float(beta))


def as_activation(value: "Activation | str") -> Activation:
  """Accepts an `Activation`, ``"relu"``, ``"softplus"`` or ``"softplus:BETA"``."""
  if isinstance(value, Activation):
    return value
  if isinstance(value, str):
    if value.startswith("softplus:"):
      return Activation("softplus", float(value.split(":", 1)[1]))
    return Activation(value)
  raise ValueError(f"`activation` must be an Activation or a name; got {value!r}.")
