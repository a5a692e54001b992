"""Adversarial gradient alignment (Joo et al. 2023) as a training term."""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from rattr_jax import regularizers
from rattr_jax.training._term import check_radius, register_term, Term


@register_term
class GradientAlignment(Term):
  """``lambda_l2 * l2 + lambda_cos * cosd`` between the explanation at ``x`` and at
  ``x + delta`` (`rattr_jax.regularizers.gradient_alignment`); logs ``ga_l2``, ``ga_cos``.

  Attributes:
    epsilon: radius of ``delta`` in input units (a per-channel radius is
      passed to `rattr_jax.regularizers.gradient_alignment` directly).
    lambda_l2, lambda_cos: weights of the squared-L2 and cosine distances.
    perturbation: ``uniform``, ``gaussian`` or ``grad_sign``.
    stop_gradient_source: no gradient through the clean explanation.
    explainer: the differentiable explanation aligned
      (`rattr_jax.explainers`), ``None`` for the gradient of the true-class
      logit. Not settable from the command line.
  """

  name = "gradient_alignment"
  choices = {"perturbation": regularizers.ALIGNMENT_PERTURBATIONS}

  epsilon: float = 0.1
  lambda_l2: float = 0.01
  lambda_cos: float = 1.0
  perturbation: str = "uniform"
  stop_gradient_source: bool = True
  explainer: object = struct.field(pytree_node=False, default=None)

  def check(self):
    check_radius(self, "epsilon")

  def to_dict(self):
    if self.explainer is not None:
      raise ValueError("`gradient_alignment.explainer` cannot be written to JSON; pass the "
                       "terms to `train(terms=...)` instead.")
    d = super().to_dict()
    del d["explainer"]
    return d

  def loss(self, ctx, batch, key):
    terms = regularizers.alignment_distances(ctx.fn, self.explainer, batch.x, batch.y, key=key,
                                             epsilon=self.epsilon, perturbation=self.perturbation,
                                             stop_gradient_source=self.stop_gradient_source)
    l2, cosd = jnp.mean(terms.l2), jnp.mean(terms.cosd)
    return self.lambda_l2 * l2 + self.lambda_cos * cosd, {"ga_l2": l2, "ga_cos": cosd}
