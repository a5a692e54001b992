"""Activations as a model setting: ReLU or softplus-beta."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

ACTIVATIONS = ("relu", "softplus", "tanh", "identity")

#: Softplus through `_softplus_beta` (True) or ``jax.nn.softplus`` (False). Read when a
#: model is traced; a switch for ``benchmarks/fused_steps.py``'s before/after rows.
FAST_SOFTPLUS = True


@jax.custom_jvp
def _softplus_beta(z: jax.Array, beta: jax.Array) -> jax.Array:
  """``log(1 + exp(beta z)) / beta`` as ``relu(z) + log1p(exp(-beta |z|)) / beta``.

  The same function as ``jax.nn.softplus(beta * z) / beta`` (within 2 ulp in float32,
  relative, tiny values included) with a cheaper derivative on XLA:CPU:
  ``jax.nn.softplus`` is ``logaddexp(x, 0)``, and autodiff differentiates that graph
  (a ``where``, an ``abs``, the ``log1p`` and ``exp``). Here the derivative is one
  ``sigmoid(beta z)`` (``lax.logistic``), whose own derivative ``beta s (1 - s)``
  serves second-order terms (gradient alignment, Hessian norm).
  ``beta`` is an array of ``z``'s dtype so that one program serves every beta; it is
  a setting and is never differentiated.
  """
  return jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-beta * jnp.abs(z))) / beta


@_softplus_beta.defjvp
def _softplus_beta_jvp(primals, tangents):
  z, beta = primals
  dz, _ = tangents  # beta is a setting, never differentiated
  return _softplus_beta(z, beta), jax.nn.sigmoid(beta * z) * dz


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
      if FAST_SOFTPLUS:
        return _softplus_beta(z, jnp.asarray(self.beta, z.dtype))
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
