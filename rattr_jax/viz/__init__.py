"""Figures (PNG) for saliency maps and metrics."""

from rattr_jax.viz._figures import add_colorbar
from rattr_jax.viz._figures import feature_bars
from rattr_jax.viz._figures import line_plot
from rattr_jax.viz._figures import saliency_grid
from rattr_jax.viz._figures import show_image

__all__ = ["add_colorbar", "feature_bars", "line_plot", "saliency_grid", "show_image"]
