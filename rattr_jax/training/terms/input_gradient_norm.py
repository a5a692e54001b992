"""The squared input-gradient norm penalty (double backpropagation) as a training term."""

from __future__ import annotations

import jax.numpy as jnp

from rattr_jax.regularizers import _input_gradient_norm as _ig
from rattr_jax.training._term import register_term, Term


@register_term
class InputGradientNorm(Term):
  """``lam`` times the mean squared norm of the input gradient of the loss (``of="loss"``)
  or of the true-class logit (``of="logit"``)."""

  name = "input_gradient_norm"
  weight_field = "lam"
  choices = {"of": _ig.OF}
  aliases = {"gradient_of": "of"}

  lam: float = 1.0
  of: str = "loss"

  def loss(self, ctx, batch, key):
    del key
    return jnp.mean(_ig.input_gradient_norm_values(ctx.fn, batch.x, batch.y, of=self.of)), {}
