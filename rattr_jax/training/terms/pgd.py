"""PGD adversarial training (Madry et al. 2018) as a training term."""

from __future__ import annotations

import jax.numpy as jnp

from rattr_jax.regularizers import _adversarial as _adv
from rattr_jax.regularizers import _common
from rattr_jax.training._term import check_radius, register_term, Term
from rattr_jax.training.terms.fgsm import accuracy

_CLIP = (0.0, 1.0)


@register_term
class PGD(Term):
  """Cross-entropy at the PGD point (attacked in inference mode); logs ``adv_acc``.

  Attributes:
    epsilon: L-infinity radius in input units.
    num_steps: PGD iterations.
    step_size: PGD step (``None``: ``2.5 * epsilon / num_steps``).
  """

  name = "pgd"

  epsilon: float = 0.1
  num_steps: int = 10
  step_size: float | None = None

  def check(self):
    check_radius(self, "epsilon")

  def loss(self, ctx, batch, key):
    eps = jnp.asarray(self.epsilon, batch.x.dtype)
    step = 2.5 * eps / self.num_steps if self.step_size is None else self.step_size
    x_adv = _adv.pgd_adversary_core(ctx.eval_fn, batch.x, batch.y, key=key, epsilon=eps,
                                    step_size=step, num_steps=self.num_steps, input_range=_CLIP)
    logits = ctx.fn(x_adv)
    return (jnp.mean(_common.cross_entropy(logits, batch.y)),
            {"adv_acc": accuracy(logits, batch.y)})
