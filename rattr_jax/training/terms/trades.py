"""The TRADES robustness term (Zhang et al. 2019) as a training term."""

from __future__ import annotations

import jax.numpy as jnp

from rattr_jax.regularizers import _adversarial as _adv
from rattr_jax.training._term import check_radius, register_term, Term
from rattr_jax.training.terms.fgsm import accuracy

_CLIP = (0.0, 1.0)


@register_term
class TRADES(Term):
  """``beta`` times ``KL(f(x) || f(x_adv))`` at the TRADES point; use with ``ce``.
  Logs ``adv_acc``.

  Attributes:
    epsilon: L-infinity radius in input units.
    beta: weight.
    num_steps: inner-attack iterations.
    step_size: inner step (``None``: ``2.5 * epsilon / num_steps``).
  """

  name = "trades"
  weight_field = "beta"

  epsilon: float = 0.1
  beta: float = 6.0
  num_steps: int = 10
  step_size: float | None = None

  def check(self):
    check_radius(self, "epsilon")

  def loss(self, ctx, batch, key):
    eps = jnp.asarray(self.epsilon, batch.x.dtype)
    step = 2.5 * eps / self.num_steps if self.step_size is None else self.step_size
    x_adv = _adv.trades_adversary_core(ctx.eval_fn, batch.x, key=key, epsilon=eps,
                                       step_size=step, num_steps=self.num_steps, input_range=_CLIP)
    logits = ctx.fn(x_adv)
    return jnp.mean(_adv._kl_rows(ctx.logits, logits)), {"adv_acc": accuracy(logits, batch.y)}
