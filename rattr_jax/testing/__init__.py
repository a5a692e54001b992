"""Closed-form toy models, finite differences and small trained fixtures."""

from rattr_jax.testing._problems import finite_difference_grad
from rattr_jax.testing._problems import finite_difference_jvp
from rattr_jax.testing._problems import linear_model
from rattr_jax.testing._problems import LinearModel
from rattr_jax.testing._problems import quadratic_model
from rattr_jax.testing._problems import QuadraticModel
from rattr_jax.testing._problems import TanhMLP
from rattr_jax.testing._problems import trained_mnist_cnn

__all__ = ["finite_difference_grad", "finite_difference_jvp", "linear_model", "LinearModel",
           "quadratic_model", "QuadraticModel", "TanhMLP", "trained_mnist_cnn"]
