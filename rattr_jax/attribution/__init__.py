"""Attribution methods: pure functions ``method(fn, x, target, *, ...) -> [B, *F]``.

Compose them into an explain function with `functools.partial`, e.g.
``explain = functools.partial(integrated_gradients, fn, num_steps=32)`` or
``explain = lambda x, t: smoothgrad(fn, x, t, key=key)``.
"""

from rattr_jax.attribution._decoy import decoy_explainer
from rattr_jax.attribution._decoy import decoy_saliency
from rattr_jax.attribution._decoy import DecoySaliency
from rattr_jax.attribution._decoy_solver import DecoyResult
from rattr_jax.attribution._decoy_solver import generate_decoys
from rattr_jax.attribution._gradient import gradient
from rattr_jax.attribution._gradient import input_x_gradient
from rattr_jax.attribution._integrated import integrated_gradients
from rattr_jax.attribution._integrated import METHODS as INTEGRATION_METHODS
from rattr_jax.attribution._integrated import path_points
from rattr_jax.attribution._smoothgrad import smoothgrad
from rattr_jax.attribution._smoothgrad import vargrad

__all__ = [
    "decoy_explainer",
    "decoy_saliency",
    "DecoySaliency",
    "DecoyResult",
    "generate_decoys",
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "INTEGRATION_METHODS",
    "path_points",
    "smoothgrad",
    "vargrad",
]
