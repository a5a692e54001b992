"""Input-gradient norm penalty (double backpropagation)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax import core
from rattr_jax.regularizers import _common

OF = ("loss", "logit")


def input_gradient_norm_values(fn: Callable, x: jax.Array, t: jax.Array, *,
                               of: str = "loss") -> jax.Array:
  """Unvalidated core of `input_gradient_norm`: ``[B]`` squared norms."""
  if of == "loss":
    g = jax.grad(lambda z: jnp.sum(_common.cross_entropy(fn(z), t)))(x)
  else:
    g = core.target_gradient(fn, x, t)
  return _common.per_example_sum(g * g)


@jit_with_callables(static_argnames=("of", "reduction"))
def _input_gradient_norm(fn, x, t, of, reduction):
  return _common.reduce(input_gradient_norm_values(fn, x, t, of=of), reduction)


def input_gradient_norm(fn: Callable, x: Float[Array, "B ..."], target: Target, *,
                        of: str = "loss", reduction: str = "mean") -> jax.Array:
  """Squared l2 norm of the input gradient, ``||d l(f(x), y) / dx||^2`` (double backprop).

  Differentiating this with respect to the parameters (through a closure
  ``fn = lambda x: apply(params, x)``) backpropagates through the input
  gradient: Drucker and LeCun's "double backpropagation", used by Ross and
  Doshi-Velez to make input gradients small and smooth. Lower is better. For
  a linear model and ``of="loss"`` it is ``||W^T (softmax(f(x)) - e_y)||^2``.

  Args:
    fn: model, ``[B, *F] -> [B, C]`` logits (examples must not interact).
    x: inputs ``[B, *F]``.
    target: true classes, an int or ``[B]``.
    of: ``"loss"`` (gradient of the per-example cross-entropy, the classic
      form) or ``"logit"`` (gradient of the true-class logit, the quantity
      explained by saliency maps).
    reduction: ``"mean"`` over the batch or ``"none"`` (``[B]``).

  Returns:
    A scalar, or ``[B]`` per-example values.

  References:
    Drucker, LeCun, "Improving generalization performance using double
    backpropagation", IEEE TNN 1992.
    Ross, Doshi-Velez, "Improving the adversarial robustness and
    interpretability of deep neural networks by regularizing their input
    gradients", AAAI 2018. https://arxiv.org/abs/1711.09404
  """
  x, t = _common.prepare(fn, x, target)
  V.check_choice(of, OF, name="of")
  V.check_choice(reduction, _common.REDUCTIONS, name="reduction")
  return _input_gradient_norm(fn=fn, x=x, t=t, of=of, reduction=reduction)
