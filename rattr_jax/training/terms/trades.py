"""The TRADES robustness term (Zhang et al. 2019) as a training term."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rattr_jax import regularizers
from rattr_jax.training._term import check_radius, register_term, Term
from rattr_jax.training.terms.fgsm import accuracy


@register_term
class TRADES(Term):
  """``beta`` times ``KL(f(x) || f(x_adv))`` at the TRADES point; use with ``ce``.
  Logs ``adv_acc``.

  Attributes:
    epsilon: L-infinity radius in input units.
    beta: weight.
    num_steps: inner-attack iterations.
    step_size: inner step (``None``: ``2.5 * epsilon / num_steps``).
    input_range: valid input box ``(lo, hi)`` the perturbed inputs are clipped
      to (the embedded and offline datasets lie in ``(0, 1)``); ``None``: no box.
      On the command line ``input_range=lo:hi`` or ``none``.
  """

  name = "trades"
  weight_field = "beta"

  epsilon: float = 0.1
  beta: float = 6.0
  num_steps: int = 10
  step_size: float | None = None
  input_range: tuple[float, float] | None = (0.0, 1.0)

  def check(self):
    check_radius(self, "epsilon")

  def loss(self, ctx, batch, key):
    x_adv = regularizers.trades_adversary(ctx.eval_fn, batch.x, key=key, epsilon=self.epsilon,
                                          step_size=self.step_size, num_steps=self.num_steps,
                                          input_range=self.input_range)
    logits = ctx.fn(x_adv)
    # KL(p(x) || p(x_adv)) per example, from log-probabilities.
    kl = optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(logits, -1),
                                                     jax.nn.log_softmax(ctx.logits, -1))
    return jnp.mean(kl), {"adv_acc": accuracy(logits, batch.y)}
