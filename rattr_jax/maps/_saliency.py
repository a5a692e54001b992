"""Post-processing of attributions into saliency maps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V

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


@functools.partial(jax.jit, static_argnames=("reduce", "normalize"))
def _saliency_map(attribution, reduce, normalize, percentile):
  return normalize_map(reduce_channels(attribution, reduce), normalize, percentile)


def saliency_map(attribution: Float[Array, "B ..."], *, reduce: str = "abs_sum",
                 normalize: str = "sum_to_one",
                 percentile: float = 95.0) -> Float[Array, "B ..."]:
  """Turns an attribution into a saliency map.

  Args:
    attribution: ``[B, H, W, C]`` for images (NHWC) or ``[B, *F]`` otherwise.
    reduce: channel reduction for images: ``abs_sum`` (sum of absolute values,
      Ghorbani/Dombrowski), ``sum``, ``max_abs`` (DANCE) or ``none``. For
      non-image inputs ``abs_sum``/``max_abs`` take ``abs`` element-wise.
    normalize: per-example normalisation: ``none``; ``sum_to_one``
      (Dombrowski); ``sum_to_hw``, i.e. the map sums to ``H*W`` (Ghorbani's
      code); ``max`` (divide by the max absolute value); ``winsorize``
      (clip at the ``percentile``-th per-example percentile, then rescale to
      [0, 1], as in DANCE).
    percentile: the winsorisation percentile, in [0, 100].

  Returns:
    ``[B, H, W]`` for NHWC attributions with a channel reduction, otherwise
    the shape of ``attribution``.

  References:
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", AAAI
    2019; Lu et al., "DANCE", ICML 2021.
  """
  a = V.check_batch(attribution, name="attribution")
  V.check_choice(reduce, REDUCTIONS, name="reduce")
  V.check_choice(normalize, NORMALIZATIONS, name="normalize")
  if not 0.0 <= float(percentile) <= 100.0:
    raise ValueError(f"`percentile` must lie in [0, 100]; got {percentile}.")
  return _saliency_map(a, reduce, normalize, jnp.asarray(percentile, a.dtype))
