"""rattr_jax: robust attributions in JAX.

Explain a model, attack the explanation, measure its fragility, inspect the
Hessian geometry behind it, and train models whose explanations hold. Every
function is pure, jittable and vmappable.
"""

__version__ = "0.1.0"

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
    "regularizers", "training", "__version__",
]
