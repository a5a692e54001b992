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
  if _backend_started():
    return False  # too late: the backend already read XLA_FLAGS
  _os.environ["XLA_FLAGS"] = (current + " --xla_cpu_experimental_ynn_fusion_type=").strip()
  return True


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge as _xb
    return bool(getattr(_xb, "_backends", None))
  except Exception:  # pragma: no cover - private API moved
    return False


def apply_cpu_dispatch_default() -> bool:
  """Runs XLA:CPU computations inline instead of through async dispatch.

  Applied on import (CPU only: the setting is read when the CPU client is
  created and does not concern GPU/TPU). With async dispatch, every CPU call
  hands its program to a worker thread and the caller waits for it to come
  back; for the small programs that attribution methods run per call, that
  hand-off was half of the time. Measured on 2 cores
  (``benchmarks/attribution_throughput.py``): MLP gradient at batch 1,
  115 -> 69 us per call; IG 211 -> 136 us; CNN gradient at batch 16, 4.3 ->
  2.7 ms; IG, SmoothGrad and attacks on the CNN unchanged. The price is that
  Python no longer runs ahead of the CPU while a computation is in flight.

  It is applied only if no backend has started yet and neither
  ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` (JAX's own variable) nor
  ``RATTR_JAX_NO_XLA_FLAGS`` is set; set either to keep JAX's default.
  Returns whether async CPU dispatch is off afterwards.
  """
  import jax
  current = not jax.config.read("jax_cpu_enable_async_dispatch")
  if (current or _os.environ.get("RATTR_JAX_NO_XLA_FLAGS")
      or "JAX_CPU_ENABLE_ASYNC_DISPATCH" in _os.environ or _backend_started()):
    return current
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True


apply_cpu_dispatch_default()

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
    "regularizers", "training", "apply_cpu_training_flag", "apply_cpu_dispatch_default",
    "__version__",
]
