"""Attribution methods: explainers ``method(fn, x, target, *, key, ...) -> [B, *F]``.

Every method takes ``key`` as a keyword (deterministic ones ignore it), so
each is an explainer in the sense of `rattr_jax.explainers`. Bind settings
with ``rattr_jax.explainers.get(name, **settings)`` (hashable) or
`functools.partial`.
"""

from rattr_jax.attribution._decoy import decoy_attribution
from rattr_jax.attribution._decoy import resolve_layer as decoy_layer
from rattr_jax.attribution._decoy import default_layer as decoy_default_layer
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
    "decoy_attribution",
    "decoy_layer",
    "decoy_default_layer",
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
