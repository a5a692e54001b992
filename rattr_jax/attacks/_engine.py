"""The compiled attack loop shared by every iterative attack.

One `lax.scan` over steps, batched over examples. Step ``p`` evaluates the
objective and its gradient at iterate ``z_p`` (on the surrogate), checks the
real model's label at ``z_p``, keeps ``z_p`` as the best iterate of an
example if its label is kept and its objective beats the best so far, then
moves to ``z_{p+1}``. The last iterate is scored after the scan. Because
``z_0 = x`` always keeps its label, the returned iterate is never a
label-flipped one: an example with no valid improvement returns ``x``.
With a random start ``z_0 != x``, ``x`` is scored first and is the fallback.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rattr_jax.core import chunk_examples as chunked  # noqa: F401
from rattr_jax.core import predicted_label


def _bcast(mask, like):
  return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def run_loop(*, fn, x, label, num_steps: int, evaluate, final_value, update, opt_state,
             start=None):
  """Runs the attack loop.

  Args:
    fn: the real model (label checks).
    x: ``[B, *F]`` original inputs.
    label: ``[B]`` labels to keep.
    num_steps: number of update steps ``P``.
    evaluate: ``evaluate(z, p) -> (objective [B], grad [B, *F])``; objective
      is maximised by the caller's update rule.
    final_value: ``final_value(z, p) -> objective [B]`` (no gradient).
    update: ``update(z, grad, opt_state, p) -> (z_next, opt_state)``.
    opt_state: initial optimiser state.
    start: optional first iterate ``z_0`` (a random start); ``None`` starts
      at ``x``. With a random start, ``x`` is scored first and stays the
      fallback.

  Returns:
    dict of per-example arrays (all with the batch axis first).
  """
  bsz = x.shape[0]
  neg_inf = jnp.full((bsz,), -jnp.inf, x.dtype)

  def keep_best(z, d, ok, p, best):
    best_x, best_obj, best_step = best
    better = ok & (d > best_obj)
    return (jnp.where(_bcast(better, z), z, best_x), jnp.where(better, d, best_obj),
            jnp.where(better, p, best_step))

  def step(carry, p):
    z, opt_state, best = carry
    d, g = evaluate(z, p)
    ok = predicted_label(fn, z) == label
    best = keep_best(z, d, ok, p, best)
    z_next, opt_state = update(z, g, opt_state, p)
    return (z_next, opt_state, best), (d, ok)

  zero = jnp.zeros((bsz,), jnp.int32)
  if start is None:
    z0, best0 = x, (x, neg_inf, zero)
  else:
    d_x = final_value(x, 0)
    z0, best0 = start, (x, d_x, zero - 1)  # step -1: x itself, the fallback
  (z, _, best), (hist, oks) = jax.lax.scan(step, (z0, opt_state, best0),
                                            jnp.arange(num_steps, dtype=jnp.int32))
  d_last = final_value(z, num_steps)
  ok_last = predicted_label(fn, z) == label
  best_x, best_obj, best_step = keep_best(z, d_last, ok_last, jnp.int32(num_steps), best)
  # Without a random start, z_0 = x is the initial point, not a step. With
  # one, z_0 is a candidate like every later iterate, so it stays in the
  # history (column 0) and the best objective is always among the columns.
  first = 1 if start is None else 0
  initial = hist[0] if start is None else best0[1]
  history = jnp.concatenate([hist[first:], d_last[None]], axis=0).T
  kept = jnp.concatenate([oks[first:], ok_last[None]], axis=0).T
  return dict(x_adv=best_x, objective=best_obj, initial_objective=initial,
              objective_history=history, label_kept_history=kept, best_step=best_step,
              success=best_obj > initial)
