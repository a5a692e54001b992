"""The Hutchinson input-Hessian norm penalty (Dombrowski et al.) as a training term."""

from __future__ import annotations

import jax.numpy as jnp

from rattr_jax.models import as_fn
from rattr_jax import regularizers
from rattr_jax.training._term import register_term, Term


@register_term
class HessianNorm(Term):
  """``lam`` times the Hutchinson estimate of ``||d^2 f_y / dx^2||_F^2``.

  Attributes:
    lam: weight.
    num_samples: Hutchinson probes per step.
    mode: ``auto`` (forward-over-reverse when the training passes support
      `jax.jvp`, else reverse-over-reverse), or a mode of
      `rattr_jax.regularizers.hessian_norm`.
  """

  name = "hessian_norm"
  weight_field = "lam"
  choices = {"mode": regularizers.HESSIAN_MODES}
  aliases = {"hessian_mode": "mode"}

  lam: float = 1e-3
  num_samples: int = 1
  mode: str = "auto"

  def prepare(self, setup):
    if self.mode != "auto":
      return self
    conv_impl = setup.conv_impl
    if conv_impl == "auto":
      from rattr_jax.training._engine import default_conv_impls
      conv_impl = default_conv_impls()[0]
    mode = regularizers.hessian_mode(as_fn(setup.model, conv_impl=conv_impl), jnp.asarray(setup.x),
                            jnp.asarray(setup.y))
    return self.replace(mode=mode)

  def loss(self, ctx, batch, key):
    mode = "reverse_over_reverse" if self.mode == "auto" else self.mode
    return regularizers.hessian_norm(ctx.fn, batch.x, batch.y, key=key,
                                     num_samples=self.num_samples, mode=mode), {}
