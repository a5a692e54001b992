"""Fast adversarial training (Wong et al. 2020) as a training term."""

from __future__ import annotations

import jax.numpy as jnp

from rattr_jax.regularizers import _adversarial as _adv
from rattr_jax.regularizers import _common
from rattr_jax.training._term import check_radius, register_term, Term

_CLIP = (0.0, 1.0)


def accuracy(logits, y):
  return jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))


@register_term
class FGSM(Term):
  """Cross-entropy at a random-start FGSM point (attacked in inference mode); logs ``adv_acc``.

  Attributes:
    epsilon: L-infinity radius in input units.
    step_size: FGSM step (``None``: ``1.25 * epsilon``).
  """

  name = "fgsm"

  epsilon: float = 0.1
  step_size: float | None = None

  def check(self):
    check_radius(self, "epsilon")

  def loss(self, ctx, batch, key):
    eps = jnp.asarray(self.epsilon, batch.x.dtype)
    step = 1.25 * eps if self.step_size is None else self.step_size
    x_adv = _adv.fgsm_adversary_core(ctx.eval_fn, batch.x, batch.y, key=key, epsilon=eps,
                                     step_size=step, input_range=_CLIP)
    logits = ctx.fn(x_adv)
    return (jnp.mean(_common.cross_entropy(logits, batch.y)),
            {"adv_acc": accuracy(logits, batch.y)})
