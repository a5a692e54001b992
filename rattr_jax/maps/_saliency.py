"""Post-processing of attributions into saliency maps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax.core import NORMALIZATIONS, REDUCTIONS, normalize_map, reduce_channels  # noqa: F401

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
