"""Shared pieces of the regularizers: argument checks, reductions, perturbations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax import _random
from rattr_jax import _validation as V
from rattr_jax import core

REDUCTIONS = ("mean", "none")
RANDOM_PERTURBATIONS = ("uniform", "gaussian")


def prepare(fn: Callable, x: Any, target: Any) -> tuple[jax.Array, jax.Array]:
  """Validates ``x`` and ``target`` for ``fn`` (works on tracers too)."""
  return core.prepare(fn, x, target)


def check_epsilon(epsilon: Any, x: jax.Array, *, name: str = "epsilon") -> jax.Array:
  """``epsilon`` as a non-negative array broadcastable to one example ``x[0]``.

  A scalar, or per-channel/per-feature values (e.g. ``eps / std_c`` for inputs
  normalised per channel, as in the gradient-alignment reference code).
  """
  V.check_nonnegative(epsilon, name=name)
  e = jnp.asarray(epsilon, dtype=x.dtype)
  try:
    jnp.broadcast_shapes(e.shape, x.shape[1:])
  except ValueError:
    raise ValueError(f"`{name}` must be a scalar or broadcastable to one example "
                     f"{tuple(x.shape[1:])}; got shape {tuple(e.shape)}.") from None
  if e.ndim > x.ndim - 1:
    raise ValueError(f"`{name}` must be broadcastable to one example {tuple(x.shape[1:])}; "
                     f"got shape {tuple(e.shape)}.")
  return e


def reduce(values: jax.Array, reduction: str) -> jax.Array:
  return jnp.mean(values) if reduction == "mean" else values


def random_delta(key: jax.Array, shape, dtype, epsilon: jax.Array, kind: str) -> jax.Array:
  """``epsilon * U[-1, 1]`` or ``epsilon * N(0, 1)`` of ``shape``."""
  if kind == "uniform":
    return epsilon * _random.uniform(key, shape, dtype, -1.0, 1.0)
  return epsilon * _random.normal(key, shape, dtype)


def per_example_sum(a: jax.Array) -> jax.Array:
  return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def per_example_mean(a: jax.Array) -> jax.Array:
  return jnp.mean(a.reshape(a.shape[0], -1), axis=1)


def cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy ``[B]`` with integer targets."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, target[:, None], axis=1)[:, 0]


def as_static_float(value: Any) -> Any:
  """Python floats stay Python floats (cheap constant folding); arrays pass through."""
  if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
    return float(value)
  return value
