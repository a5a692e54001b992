"""Closed-form toy models, finite differences, small trained fixtures and the contract table."""

from rattr_jax.testing._contracts import batch_leaves as contract_batch_leaves
from rattr_jax.testing._contracts import Contract
from rattr_jax.testing._contracts import contract_table
from rattr_jax.testing._contracts import inputs as contract_inputs
from rattr_jax.testing._contracts import model as contract_model
from rattr_jax.testing._contracts import targets as contract_targets

from rattr_jax.testing._problems import finite_difference_grad
from rattr_jax.testing._problems import finite_difference_jvp
from rattr_jax.testing._problems import linear_model
from rattr_jax.testing._problems import LinearModel
from rattr_jax.testing._problems import quadratic_model
from rattr_jax.testing._problems import QuadraticModel
from rattr_jax.testing._problems import TanhMLP
from rattr_jax.testing._problems import trained_mnist_cnn

__all__ = ["contract_batch_leaves", "Contract", "contract_table", "contract_inputs",
           "contract_model", "contract_targets", "finite_difference_grad", "finite_difference_jvp", "linear_model", "LinearModel",
           "quadratic_model", "QuadraticModel", "TanhMLP", "trained_mnist_cnn"]
