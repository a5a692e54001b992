"""Metrics on explanations. Every metric returns one value per example ``[B]``."""

from rattr_jax.metrics._similarity import average_ranks
from rattr_jax.metrics._similarity import center_of_mass
from rattr_jax.metrics._similarity import center_shift
from rattr_jax.metrics._similarity import cosine_similarity
from rattr_jax.metrics._similarity import kendall_tau
from rattr_jax.metrics._similarity import mse
from rattr_jax.metrics._similarity import pearson
from rattr_jax.metrics._similarity import spearman
from rattr_jax.metrics._similarity import ssim
from rattr_jax.metrics._similarity import topk_intersection

__all__ = [
    "average_ranks",
    "center_of_mass",
    "center_shift",
    "cosine_similarity",
    "kendall_tau",
    "mse",
    "pearson",
    "spearman",
    "ssim",
    "topk_intersection",
]
