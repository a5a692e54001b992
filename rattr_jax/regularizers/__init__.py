"""Explanation-robustness regularizers and adversarial-training losses.

Each is a pure loss term ``(fn, x, target, *, key, ...) -> scalar`` (or ``[B]``
with ``reduction="none"``) that adds to the cross-entropy; the double backward
to the parameters comes from `jax.grad` through a closure
``fn = lambda x: apply(params, x)``. `activation_sensitivity` takes the NNX
model itself, to read hidden layers by name.
"""

from rattr_jax.regularizers._activation_sensitivity import activation_sensitivity
from rattr_jax.regularizers._activation_sensitivity import feature_neuron_sensitivity
from rattr_jax.regularizers._activation_sensitivity import feature_sensitivity
from rattr_jax.regularizers._activation_sensitivity import FORMS as SENSITIVITY_FORMS
from rattr_jax.regularizers._activation_sensitivity import PERTURBATIONS as SENSITIVITY_PERTURBATIONS
from rattr_jax.regularizers._activation_sensitivity import neuron_sensitivity
from rattr_jax.regularizers._adversarial import fgsm_adversary
from rattr_jax.regularizers._adversarial import fgsm_training
from rattr_jax.regularizers._adversarial import pgd_adversary
from rattr_jax.regularizers._adversarial import pgd_training
from rattr_jax.regularizers._adversarial import trades
from rattr_jax.regularizers._adversarial import trades_adversary
from rattr_jax.regularizers._gradient_alignment import alignment_distances
from rattr_jax.regularizers._gradient_alignment import AlignmentTerms
from rattr_jax.regularizers._gradient_alignment import gradient_alignment
from rattr_jax.regularizers._gradient_alignment import PERTURBATIONS as ALIGNMENT_PERTURBATIONS
from rattr_jax.regularizers._hessian_norm import hessian_mode
from rattr_jax.regularizers._hessian_norm import hessian_norm
from rattr_jax.regularizers._hessian_norm import MODES as HESSIAN_MODES
from rattr_jax.regularizers._input_gradient_norm import input_gradient_norm
from rattr_jax.regularizers._input_gradient_norm import OF as GRADIENT_OF

__all__ = [
    "activation_sensitivity", "neuron_sensitivity", "feature_sensitivity",
    "feature_neuron_sensitivity", "SENSITIVITY_FORMS", "SENSITIVITY_PERTURBATIONS", "fgsm_adversary", "fgsm_training",
    "pgd_adversary", "pgd_training", "trades", "trades_adversary", "gradient_alignment",
    "hessian_norm", "input_gradient_norm", "alignment_distances", "AlignmentTerms",
    "ALIGNMENT_PERTURBATIONS", "hessian_mode", "HESSIAN_MODES", "GRADIENT_OF",
]
