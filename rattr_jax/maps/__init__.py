"""Saliency-map post-processing: channel reductions and normalisations."""

from rattr_jax.maps._saliency import NORMALIZATIONS
from rattr_jax.maps._saliency import normalize_map
from rattr_jax.maps._saliency import reduce_channels
from rattr_jax.maps._saliency import REDUCTIONS
from rattr_jax.maps._saliency import saliency_map

__all__ = ["saliency_map", "reduce_channels", "normalize_map", "REDUCTIONS",
           "NORMALIZATIONS"]
