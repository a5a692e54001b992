"""The squared input-gradient norm penalty (double backpropagation) as a training term."""

from __future__ import annotations


from rattr_jax import regularizers
from rattr_jax.training._term import register_term, Term


@register_term
class InputGradientNorm(Term):
  """``lam`` times the mean squared norm of the input gradient of the loss (``of="loss"``)
  or of the true-class logit (``of="logit"``)."""

  name = "input_gradient_norm"
  weight_field = "lam"
  choices = {"of": regularizers.GRADIENT_OF}
  aliases = {"gradient_of": "of"}

  lam: float = 1.0
  of: str = "loss"

  def loss(self, ctx, batch, key):
    del key
    return regularizers.input_gradient_norm(ctx.fn, batch.x, batch.y, of=self.of), {}
