"""Constraint sets of the attacks: the L-infinity ball, the valid range, the label."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax import _validation as V


def project(x_adv: jax.Array, x: jax.Array, epsilon: jax.Array,
            input_range: tuple[float, float] | None) -> jax.Array:
  """Projects onto the L-infinity ``epsilon``-ball around the ORIGINAL ``x``,
  then onto the valid range (Ghorbani et al., Algorithm 1).

  ``x + clip(x_adv - x, -eps, eps)``, then ``clip(., lo, hi)``. Since ``x``
  itself lies in the range, the result lies in both sets. ``epsilon = inf``
  leaves only the range constraint.
  """
  out = x + jnp.clip(x_adv - x, -epsilon, epsilon)
  if input_range is not None:
    out = jnp.clip(out, input_range[0], input_range[1])
  return out


def predicted_label(fn, x: jax.Array) -> jax.Array:
  """``argmax fn(x)`` per example, ``[B]`` int32."""
  return jnp.argmax(fn(x), axis=-1).astype(jnp.int32)


def check_input_range(input_range: Any, x: jax.Array) -> tuple[float, float] | None:
  """Checks ``input_range = (lo, hi)`` with ``lo < hi`` and that ``x`` lies in it."""
  if input_range is None:
    return None
  try:
    lo, hi = (float(v) for v in input_range)
  except (TypeError, ValueError):
    raise ValueError(f"`input_range` must be a pair (lo, hi) or None; got {input_range!r}.")
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise ValueError(f"`input_range` must be finite with lo < hi; got {input_range!r}.")
  if V.is_concrete(x):
    arr = np.asarray(x)
    if arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6:
      raise ValueError(
          f"`x` must lie inside `input_range` {(lo, hi)}; got values in "
          f"[{arr.min():.4g}, {arr.max():.4g}]. Set `input_range` to your data's range.")
  return (lo, hi)


def check_epsilon(epsilon: Any, *, allow_inf: bool = False, name: str = "epsilon") -> None:
  """``epsilon >= 0``; ``inf`` only where there may be no ball."""
  if V.is_concrete(epsilon):
    arr = np.asarray(epsilon, dtype=np.float64)
    if arr.ndim != 0:
      raise ValueError(f"`{name}` must be a scalar; got shape {arr.shape}.")
    if np.isnan(arr) or (np.isinf(arr) and not allow_inf):
      raise ValueError(f"`{name}` must be finite; got {epsilon!r}.")
    if arr < 0:
      raise ValueError(f"`{name}` must be non-negative; got {epsilon!r}.")


def check_positive_scalar(value: Any, *, name: str) -> None:
  if V.is_concrete(value):
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 0:
      raise ValueError(f"`{name}` must be a scalar; got shape {arr.shape}.")
    if not np.isfinite(arr) or arr <= 0:
      raise ValueError(f"`{name}` must be positive and finite; got {value!r}.")
