"""A minimal, fast trainer for small classifiers (CLI demos, tests, notebooks).

Full-featured robust training (regularizers, checkpoints, resume, sharding)
lives in `rattr_jax.training`; this helper only fits a model with
cross-entropy and Adam, one jitted `lax.scan` per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rattr_jax.models import functional


def accuracy(fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
  """Top-1 accuracy of ``fn`` on ``(x, y)``, evaluated in chunks."""
  jfn = jax.jit(fn)
  correct = 0
  for i in range(0, len(x), batch_size):
    correct += int(jnp.sum(jnp.argmax(jfn(jnp.asarray(x[i:i + batch_size])), -1)
                           == jnp.asarray(y[i:i + batch_size])))
  return correct / len(x)


def fit(model: nnx.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 1,
        batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
        progress: Callable[[int, float], None] | None = None) -> nnx.Module:
  """Trains ``model`` in place-free fashion and returns the trained model.

  Args:
    model: an NNX classifier without BatchNorm (inference-mode apply).
    x, y: training arrays.
    epochs: passes over the data.
    batch_size: minibatch size (the remainder of each epoch is dropped).
    learning_rate: Adam learning rate.
    seed: shuffling seed.
    progress: optional callback ``progress(epoch, mean_loss)``.
  """
  apply, state = functional(model)
  graphdef, _ = nnx.split(model)
  params = state
  opt = optax.adam(learning_rate)
  opt_state = opt.init(params)

  def loss_fn(p, xb, yb):
    logits = apply(p, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  @jax.jit
  def epoch(p, s, xs, ys):
    def step(carry, batch):
      p, s = carry
      loss, g = jax.value_and_grad(loss_fn)(p, *batch)
      upd, s = opt.update(g, s, p)
      return (optax.apply_updates(p, upd), s), loss
    (p, s), losses = jax.lax.scan(step, (p, s), (xs, ys))
    return p, s, jnp.mean(losses)

  n = (len(x) // batch_size) * batch_size
  rng = np.random.default_rng(seed)
  for e in range(epochs):
    idx = rng.permutation(len(x))[:n]
    xs = jnp.asarray(x[idx]).reshape((-1, batch_size) + x.shape[1:])
    ys = jnp.asarray(y[idx]).reshape(-1, batch_size)
    params, opt_state, loss = epoch(params, opt_state, xs, ys)
    if progress is not None:
      progress(e, float(loss))
  return nnx.merge(graphdef, params)
