"""Several models of one architecture trained as one compiled program.

`train_many` trains S models (e.g. S seeds of one method) with `jax.vmap`
over their stacked parameters, optimizer states, PRNG keys and data orders:
one `lax.scan` over the epoch's steps, vmapped over the models. Each model's
result equals its own run of `make_train_step(...).run` on the same data
order, up to float rounding (the batched matrix products may sum in another
order).

When it wins (measured on 2 CPU cores, CE, batch 32): MLPs, 1.04-1.32x faster
than S sequential runs for S = 2, 4, 8. Conv nets lose on CPU (MNIST CNN
0.27-0.44x, CIFAR LeNet 0.31x): vmap over the weights turns each convolution
into a grouped convolution (``feature_group_count = S``), which XLA:CPU runs
on a slow path, and one conv net already keeps both cores busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from rattr_jax.training._engine import make_train_step, TrainStep
from rattr_jax.training._term import Term, TermSetup
from rattr_jax.training._terms import LossTerm


@struct.dataclass
class ManyResult:
  """What `train_many` returns.

  Attributes:
    state: the S final `TrainState`\\ s stacked on a leading axis.
    losses: ``[S, epochs]`` mean training loss of each model in each epoch.
    orders: ``[S, epochs, steps, batch_size]`` the example indices each model saw.
    train_step: the `TrainStep` of the first model (``train_step.model_of``
      turns one unstacked state into an NNX model).
  """

  state: Any
  losses: jax.Array
  orders: np.ndarray
  train_step: TrainStep = struct.field(pytree_node=False)

  def model(self, i: int) -> nnx.Module:
    """The ``i``-th trained model as an NNX module."""
    return self.train_step.model_of(jax.tree_util.tree_map(lambda a: a[i], self.state))


def data_orders(num_examples: int, *, seeds: Sequence[int], epochs: int,
                batch_size: int) -> np.ndarray:
  """``[S, epochs, steps, batch_size]`` shuffles: model ``s``, epoch ``e`` uses
  ``np.random.default_rng([seeds[s], e])``; the remainder of each epoch is dropped."""
  steps = num_examples // batch_size
  return np.stack([np.stack([
      np.random.default_rng([int(s), e]).permutation(num_examples)[:steps * batch_size]
      .reshape(steps, batch_size) for e in range(epochs)]) for s in seeds]).astype(np.int32)


def train_many(models: Sequence[nnx.Module], optimizer: optax.GradientTransformation,
               terms: Sequence[LossTerm], x, y, *, epochs: int, batch_size: int,
               seeds: Sequence[int] | None = None) -> ManyResult:
  """Trains S models of one architecture as one program (vmap over the models).

  Args:
    models: S NNX classifiers with the same structure (e.g.
      ``[create_model("cnn", ..., seed=s) for s in range(S)]``); their current
      weights are the starting points.
    optimizer: an optax transformation (shared settings, separate states).
    terms: the objective (`rattr_jax.training.Term`\\ s, e.g.
      `rattr_jax.training.method_terms`, or engine `LossTerm`\\ s); terms
      with a per-epoch ``refresh`` are not supported.
    x, y: the training set, ``[N, *F]`` and integer labels ``[N]``.
    epochs: passes over the data.
    batch_size: examples per step (each epoch's remainder is dropped).
    seeds: one seed per model (default ``0..S-1``): its state's PRNG key and
      its data order (`data_orders`).

  Returns:
    A `ManyResult`. Model ``i`` equals ``make_train_step(models[i], optimizer,
    terms, seed=seeds[i])`` run over ``orders[i]`` epoch by epoch.

  Example:
    >>> ms = [models.create_model("mlp", input_shape=(8,), num_classes=3, seed=s)
    ...       for s in range(4)]                                  # doctest: +SKIP
    >>> res = train_many(ms, optax.adam(1e-3), method_terms("ce"), x, y,
    ...                  epochs=2, batch_size=32)                 # doctest: +SKIP
  """
  models = list(models)
  if not models:
    raise ValueError("`models` must contain at least one model.")
  seeds = list(range(len(models))) if seeds is None else [int(s) for s in seeds]
  if len(seeds) != len(models):
    raise ValueError(f"`seeds` must have one seed per model ({len(models)}); got {len(seeds)}.")
  x, y = jnp.asarray(x), jnp.asarray(y)
  setup = TermSetup(model=models[0], x=x[:2], y=y[:2])
  terms = [t.loss_term(setup) if isinstance(t, Term) else t for t in terms]
  if any(t.refresh is not None for t in terms):
    raise ValueError("`terms` with a per-epoch refresh are not supported by train_many.")
  if not (isinstance(epochs, int) and epochs >= 1):
    raise ValueError(f"`epochs` must be a positive int; got {epochs!r}.")
  if not (isinstance(batch_size, int) and 1 <= batch_size <= x.shape[0]):
    raise ValueError(f"`batch_size` must be an int in [1, {x.shape[0]}]; got {batch_size!r}.")
  structure = jax.tree_util.tree_structure(nnx.state(models[0]))
  shapes = [a.shape for a in jax.tree_util.tree_leaves(nnx.state(models[0]))]
  for m in models[1:]:
    if (jax.tree_util.tree_structure(nnx.state(m)) != structure
        or [a.shape for a in jax.tree_util.tree_leaves(nnx.state(m))] != shapes):
      raise ValueError("`models` must all have the same architecture.")
  steps = [make_train_step(m, optimizer, terms, seed=s) for m, s in zip(models, seeds)]
  ts = steps[0]
  state = jax.tree_util.tree_map(lambda *a: jnp.stack(a),
                                 *[t.init(s) for t, s in zip(steps, seeds)])
  orders = data_orders(int(x.shape[0]), seeds=seeds, epochs=epochs, batch_size=batch_size)
  run_all = _vmapped_run(ts)
  losses = []
  for e in range(epochs):
    state, metrics = run_all(state, x, y, jnp.asarray(orders[:, e]))
    losses.append(jnp.mean(metrics["loss"], axis=1))
  return ManyResult(state=state, losses=jnp.stack(losses, axis=1), orders=orders, train_step=ts)


def _vmapped_run(ts: TrainStep):
  return jax.jit(jax.vmap(ts.run, in_axes=(0, None, None, 0)), donate_argnums=0)


__all__ = ["ManyResult", "data_orders", "train_many"]
