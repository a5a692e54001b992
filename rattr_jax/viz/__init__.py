"""Figures (PNG) for saliency maps and metrics."""

from rattr_jax.viz._figures import line_plot
from rattr_jax.viz._figures import saliency_grid

__all__ = ["line_plot", "saliency_grid"]
