"""rattr_jax: robust attributions in JAX.

Explain a model, attack the explanation, measure its fragility, inspect the
Hessian geometry behind it, and train models whose explanations hold. Every
function is pure, jittable and vmappable.
"""

__version__ = "0.1.0"

import os as _os


def apply_cpu_training_flag() -> bool:
  """Sends XLA:CPU convolution weight-gradients to Eigen (measured 1.3-1.8x per training step).

  Call it before the first JAX computation; ``rattr train`` calls it for you.
  It is not applied on import because the same flag made input-gradient
  attributions slower (CNN batch 16: gradient 6 -> 12 ms, IG 185 -> 294 ms
  per call in `benchmarks/attribution_throughput.py`). Returns whether the
  flag is set in ``XLA_FLAGS`` afterwards.

  By default XLA:CPU lowers each convolution weight-gradient as a convolution
  with a huge window (one took 570 ms on the CIFAR LeNet); the flag
  ``--xla_cpu_experimental_ynn_fusion_type=`` (empty) avoids that
  (`benchmarks/training_cost.py`, ``shared/research/cpu_performance.md``).
  XLA reads ``XLA_FLAGS`` once, when the first backend starts, so the flag is
  added only if no backend has started yet and the user has not set it
  (either way). Set ``RATTR_JAX_NO_XLA_FLAGS=1`` to leave ``XLA_FLAGS``
  alone. It only concerns XLA:CPU; GPU/TPU ignore it.
  """
  current = _os.environ.get("XLA_FLAGS", "")
  if _os.environ.get("RATTR_JAX_NO_XLA_FLAGS") or "xla_cpu_experimental_ynn_fusion_type" in current:
    return "xla_cpu_experimental_ynn_fusion_type" in current
  try:
    from jax._src import xla_bridge as _xb
    if getattr(_xb, "_backends", None):
      return False  # too late: the backend already read XLA_FLAGS
  except Exception:  # pragma: no cover - private API moved
    pass
  _os.environ["XLA_FLAGS"] = (current + " --xla_cpu_experimental_ynn_fusion_type=").strip()
  return True

from rattr_jax import attacks
from rattr_jax import attribution
from rattr_jax import curvature
from rattr_jax import influence
from rattr_jax import maps
from rattr_jax import metrics
from rattr_jax import models
from rattr_jax import regularizers
from rattr_jax import training

__all__ = [
    "attacks", "attribution", "curvature", "influence", "maps", "metrics", "models",
    "regularizers", "training", "apply_cpu_training_flag", "__version__",
]
