"""Target-logit selection and the shared batch contract of attribution methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rattr_jax import _validation as V


def prepare(fn: Callable, x: Any, target: Any) -> tuple[jax.Array, jax.Array]:
  """Validates ``x`` and ``target`` for ``fn`` and returns them as arrays.

  Raises:
    ValueError: ``x`` is not a finite floating batch, ``fn`` does not return
      ``[B, C]`` logits, or ``target`` has the wrong length or range.
  """
  x = V.check_batch(x)
  num_classes = V.num_classes_of(fn, x)
  t = V.check_target(target, x.shape[0], num_classes)
  return x, t


def target_logits(fn: Callable, x: jax.Array, target: jax.Array) -> jax.Array:
  """Returns ``fn(x)[b, target[b]]`` with shape ``[B]``."""
  logits = fn(x)
  return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


def target_gradient(fn: Callable, x: jax.Array, target: jax.Array) -> jax.Array:
  """Gradient of each example's target logit w.r.t. its own input.

  One `jax.grad` of the summed target logits. This equals the per-example
  gradient whenever examples do not interact inside ``fn`` (true for every
  model evaluated in inference mode, e.g. BatchNorm with fixed statistics).
  """
  return jax.grad(lambda z: jnp.sum(target_logits(fn, z, target)))(x)


def predicted_label(fn: Callable, x: jax.Array) -> jax.Array:
  """``argmax fn(x)`` per example, ``[B]`` int32."""
  return jnp.argmax(fn(x), axis=-1).astype(jnp.int32)
