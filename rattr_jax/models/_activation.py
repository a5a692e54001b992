"""Activations as a model setting: ReLU or softplus-beta."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

ACTIVATIONS = ("relu", "softplus", "tanh", "identity")

#: Softplus through `_softplus_beta` (True) or ``jax.nn.softplus`` (False). Read when a
#: model is traced; a switch for ``benchmarks/fused_steps.py``'s before/after rows.
FAST_SOFTPLUS = True
#: float32 softplus: ``log1p`` of ``exp(-beta |z|)`` by `_log1p_unit` (True) or ``jnp.log1p``
#: (False). Read when a model is traced; a switch for ``benchmarks/fused_steps.py``.
LOG1P_SERIES = True


def _log1p_unit(t: jax.Array) -> jax.Array:
  """``log1p(t)`` for float32 ``t`` in ``[0, 1]``, by one division and a polynomial.

  ``log1p(t) = 2 atanh(s)`` with ``s = t / (2 + t)`` in ``[0, 1/3]``:
  ``2 s (1 + s^2/3 + s^4/5 + ... + s^14/15)`` (the remainder is below
  ``(1/9)^8 / 17``, 3e-9 relative); max relative error 1.9 float32 eps on
  ``[0, 1]`` (float64 reference), tiny ``t`` included (no cancellation: ``s ~ t/2``).
  Why not ``jnp.log1p``: XLA:CPU emits it as a ``log`` and a correction, which in the
  loop fusions around a convolution (those with a broadcast, e.g. the bias, which
  XLA:CPU's tiled emitter does not take) ran 2.5x slower than this: softplus-3 of
  ``[128, 28, 28, 16]`` alone, 4.6 against 1.8 ms.
  """
  s = t / (2 + t)
  z = s * s
  r = jnp.asarray(1 / 15, t.dtype)
  for k in range(6, -1, -1):
    r = r * z + jnp.asarray(1 / (2 * k + 1), t.dtype)
  return 2 * s * r


@jax.custom_jvp
def _softplus_beta(z: jax.Array, beta: jax.Array) -> jax.Array:
  """``log(1 + exp(beta z)) / beta`` as ``relu(z) + log1p(exp(-beta |z|)) / beta``.

  The same function as ``jax.nn.softplus(beta * z) / beta`` (within 3 float32 eps,
  relative, tiny values included) with a cheaper derivative on XLA:CPU:
  ``jax.nn.softplus`` is ``logaddexp(x, 0)``, and autodiff differentiates that graph
  (a ``where``, an ``abs``, the ``log1p`` and ``exp``). Here the derivative is one
  ``sigmoid(beta z)`` (``lax.logistic``), whose own derivative ``beta s (1 - s)``
  serves second-order terms (gradient alignment, Hessian norm).
  ``beta`` is an array of ``z``'s dtype so that one program serves every beta; it is
  a setting and is never differentiated.
  """
  t = jnp.exp(-beta * jnp.abs(z))
  log1p = _log1p_unit if LOG1P_SERIES and z.dtype == jnp.float32 else jnp.log1p
  return jnp.maximum(z, 0) + log1p(t) / beta


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
