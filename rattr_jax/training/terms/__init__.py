"""The built-in training terms, one file each; importing a file registers its term.

Adding a term is one new file here (a `rattr_jax.training.Term` subclass with
``@register_term``) plus one export line below.
"""

from rattr_jax.training.terms.activation_sensitivity import ActivationSensitivity
from rattr_jax.training.terms.cross_entropy import CrossEntropy
from rattr_jax.training.terms.fgsm import FGSM
from rattr_jax.training.terms.gradient_alignment import GradientAlignment
from rattr_jax.training.terms.hessian_norm import HessianNorm
from rattr_jax.training.terms.input_gradient_norm import InputGradientNorm
from rattr_jax.training.terms.pgd import PGD
from rattr_jax.training.terms.trades import TRADES

__all__ = ["ActivationSensitivity", "CrossEntropy", "FGSM", "GradientAlignment", "HessianNorm",
           "InputGradientNorm", "PGD", "TRADES"]
