"""Curvature of the decision function: Hessian-vector products, spectra, level-set geometry.

Every function works per example over a batch, on the input Hessian of the
target logit (``objective="logit"``) or of the target cross-entropy
(``objective="loss"``); `param_hvp` and `param_hessian_eigs` differentiate
with respect to the parameters instead. Nothing forms a dense Hessian except
`dense_hessian` (small inputs only). Hessian-vector products are
forward-over-reverse when ``fn`` allows forward-mode AD (every
`rattr_jax.models` layer does, the fast CPU convolution included), and fall
back to reverse-over-reverse when it contains a `jax.custom_vjp`; see `hvp`.

For ReLU networks the input Hessian of the logit is zero almost everywhere:
every function returns zeros (never NaN). Study their geometry through a
softplus-beta surrogate (`rattr_jax.models.surrogate_fn`).
"""

from rattr_jax.curvature._dense import dense_hessian
from rattr_jax.curvature._geometry import EFFECTIVE_RANKS
from rattr_jax.curvature._geometry import effective_rank
from rattr_jax.curvature._geometry import gradient_angles
from rattr_jax.curvature._geometry import principal_curvature
from rattr_jax.curvature._geometry import random_direction_angle
from rattr_jax.curvature._hvp import hvp
from rattr_jax.curvature._hvp import MODES
from rattr_jax.curvature._hvp import OBJECTIVES
from rattr_jax.curvature._hvp import param_hvp
from rattr_jax.curvature._hvp import supports_forward_mode
from rattr_jax.curvature._results import GradientAngles
from rattr_jax.curvature._results import HessianEigs
from rattr_jax.curvature._results import ParamHessianEigs
from rattr_jax.curvature._results import PrincipalCurvature
from rattr_jax.curvature._results import SpectralDensity
from rattr_jax.curvature._results import StochasticEstimate
from rattr_jax.curvature._sensitivity import explanation_sensitivity
from rattr_jax.curvature._spectrum import hessian_eigs
from rattr_jax.curvature._spectrum import param_hessian_eigs
from rattr_jax.curvature._spectrum import spectral_density
from rattr_jax.curvature._trace import hessian_frobenius_norm
from rattr_jax.curvature._trace import hutchinson_trace

__all__ = [
    "dense_hessian",
    "EFFECTIVE_RANKS",
    "effective_rank",
    "explanation_sensitivity",
    "GradientAngles",
    "gradient_angles",
    "HessianEigs",
    "hessian_eigs",
    "hessian_frobenius_norm",
    "hutchinson_trace",
    "hvp",
    "MODES",
    "OBJECTIVES",
    "param_hessian_eigs",
    "param_hvp",
    "ParamHessianEigs",
    "principal_curvature",
    "PrincipalCurvature",
    "random_direction_angle",
    "spectral_density",
    "SpectralDensity",
    "StochasticEstimate",
    "supports_forward_mode",
]
