"""PGD adversarial training (Madry et al. 2018) as a training term."""

from __future__ import annotations

import jax.numpy as jnp

from rattr_jax import regularizers
from rattr_jax.training._term import check_radius, register_term, Term
from rattr_jax.training.terms.cross_entropy import cross_entropy
from rattr_jax.training.terms.fgsm import accuracy


@register_term
class PGD(Term):
  """Cross-entropy at the PGD point (attacked in inference mode); logs ``adv_acc``.

  Attributes:
    epsilon: L-infinity radius in input units.
    num_steps: PGD iterations.
    step_size: PGD step (``None``: ``2.5 * epsilon / num_steps``).
    input_range: valid input box ``(lo, hi)`` the perturbed inputs are clipped
      to (the embedded and offline datasets lie in ``(0, 1)``); ``None``: no box.
      On the command line ``input_range=lo:hi`` or ``none``.
  """

  name = "pgd"

  epsilon: float = 0.1
  num_steps: int = 10
  step_size: float | None = None
  input_range: tuple[float, float] | None = (0.0, 1.0)

  def check(self):
    check_radius(self, "epsilon")

  def loss(self, ctx, batch, key):
    x_adv = regularizers.pgd_adversary(ctx.eval_fn, batch.x, batch.y, key=key,
                                       epsilon=self.epsilon, step_size=self.step_size,
                                       num_steps=self.num_steps, input_range=self.input_range)
    logits = ctx.fn(x_adv)
    return (jnp.mean(cross_entropy(logits, batch.y)),
            {"adv_acc": accuracy(logits, batch.y)})
