"""The SENN report behind ``rattr senn report`` (Alvarez-Melis & Jaakkola 2018, sections 4-5).

Re-exports only: evaluation settings, the ``lambda_robustness`` sweep, the
post-hoc baselines on a black-box CNN, and the paper's figures (explicitness
grid, ``theta``/``h`` bars, training diagnostics, the robustness-accuracy
trade-off).
"""

from rattr_jax.senn._figures import explicitness_grid
from rattr_jax.senn._figures import theta_h_bars
from rattr_jax.senn._figures import tradeoff_plot
from rattr_jax.senn._figures import training_diagnostics
from rattr_jax.senn._report import dead_concepts
from rattr_jax.senn._report import DEAD_VARIANCE
from rattr_jax.senn._report import evaluate_posthoc
from rattr_jax.senn._report import evaluate_senn
from rattr_jax.senn._report import EvalSettings
from rattr_jax.senn._report import POSTHOC
from rattr_jax.senn._report import posthoc_explainers
from rattr_jax.senn._report import sweep
from rattr_jax.senn._report import train_blackbox

__all__ = [
    "explicitness_grid", "theta_h_bars", "tradeoff_plot", "training_diagnostics",
    "dead_concepts", "DEAD_VARIANCE", "evaluate_posthoc", "evaluate_senn", "EvalSettings",
    "POSTHOC", "posthoc_explainers", "sweep", "train_blackbox",
]
