"""Map reduction: attributions -> per-pixel maps, normalisation, centre of mass."""

from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS = ("abs_sum", "sum", "max_abs", "none")
NORMALIZATIONS = ("none", "sum_to_one", "sum_to_hw", "max", "winsorize")
_TINY = 1e-12


def reduce_channels(attribution: jax.Array, reduce: str) -> jax.Array:
  """Reduces the channel axis of an NHWC attribution ``[B, H, W, C] -> [B, H, W]``.

  Inputs of any other rank are reduced element-wise (``abs`` for ``abs_sum``
  and ``max_abs``, identity for ``sum``), keeping their shape.
  """
  a = attribution
  if reduce == "none":
    return a
  if a.ndim == 4:
    if reduce == "abs_sum":
      return jnp.sum(jnp.abs(a), axis=-1)
    if reduce == "sum":
      return jnp.sum(a, axis=-1)
    return jnp.max(jnp.abs(a), axis=-1)
  return a if reduce == "sum" else jnp.abs(a)


def normalize_map(m: jax.Array, normalize: str, percentile: float = 95.0) -> jax.Array:
  """Normalises each example of ``m [B, ...]`` over its non-batch axes."""
  if normalize == "none":
    return m
  axes = tuple(range(1, m.ndim))
  if normalize == "sum_to_one":
    return m / (jnp.sum(m, axis=axes, keepdims=True) + _TINY)
  if normalize == "sum_to_hw":
    n = 1
    for d in m.shape[1:3] if m.ndim >= 3 else m.shape[1:]:
      n *= d
    return n * m / (jnp.sum(m, axis=axes, keepdims=True) + _TINY)
  if normalize == "max":
    return m / (jnp.max(jnp.abs(m), axis=axes, keepdims=True) + _TINY)
  # winsorize at a per-example percentile, then rescale to [0, 1] (DANCE).
  flat = m.reshape(m.shape[0], -1)
  hi = jnp.percentile(flat, percentile, axis=1).reshape((-1,) + (1,) * (m.ndim - 1))
  m = jnp.minimum(m, hi)
  lo = jnp.min(m, axis=axes, keepdims=True)
  return (m - lo) / (hi - lo + _TINY)


def to_map(attribution: jax.Array, reduce: str, normalize: str = "none") -> jax.Array:
  """Attribution ``[B, *F]`` -> normalised map (``[B, H, W]`` for NHWC with a reduction)."""
  return normalize_map(reduce_channels(attribution, reduce), normalize)


def map_shape_of(shape: tuple[int, ...], reduce: str) -> tuple[int, ...]:
  """The shape of the map of an attribution of ``shape`` under ``reduce``."""
  if reduce != "none" and len(shape) == 4:
    return tuple(shape[:3])
  return tuple(shape)


def map_center_of_mass(m: jax.Array) -> jax.Array:
  """Centre of mass ``(row, col)`` ``[B, 2]`` of maps ``[B, H, W]`` (unvalidated, differentiable)."""
  h, w = m.shape[1], m.shape[2]
  rows = jnp.arange(h, dtype=m.dtype)
  cols = jnp.arange(w, dtype=m.dtype)
  total = jnp.sum(m, axis=(1, 2)) + _TINY
  r = jnp.einsum("bhw,h->b", m, rows) / total
  c = jnp.einsum("bhw,w->b", m, cols) / total
  return jnp.stack([r, c], axis=-1)


def pearson_rows(u: jax.Array, v: jax.Array) -> jax.Array:
  """Pearson correlation along the last axis (unvalidated, traceable).

  A constant row gives exactly NaN (its float mean need not equal its value,
  so the centred row is not always exactly 0), as scipy.
  """
  constant = jnp.all(u == u[..., :1], axis=-1) | jnp.all(v == v[..., :1], axis=-1)
  u = u - jnp.mean(u, axis=-1, keepdims=True)
  v = v - jnp.mean(v, axis=-1, keepdims=True)
  num = jnp.sum(u * v, axis=-1)
  den = jnp.sqrt(jnp.sum(u * u, axis=-1) * jnp.sum(v * v, axis=-1))
  return jnp.where(constant, jnp.nan, num / den)
