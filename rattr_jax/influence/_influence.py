"""Influence functions of training points on test predictions, for the last layer.

For a classifier ``fn(x) = phi(x) @ W + b`` trained with softmax cross-entropy,
the parameters are ``theta = (W, b)`` and ``phi`` is held fixed (Koh & Liang's
and Ghorbani et al.'s last-layer setting). With the training Hessian
``H = 1/N sum_i d^2 L(z_i) / d theta^2`` (exact, ``P x P`` with
``P = (D + 1) C``) and damping ``lambda``, the influence of up-weighting the
training point ``z_i`` on the loss at a test point ``z_t`` is

    I(z_i, z_t) = -grad L(z_t)^T (H + lambda I)^{-1} grad L(z_i).

``I > 0``: up-weighting ``z_i`` raises the test loss (harmful); ``I < 0``:
it lowers it (helpful). We call ``-I`` the *helpfulness*; the "most
influential" training points are the ``k`` most helpful ones.

The per-example gradient and Hessian of cross-entropy in the last layer have
closed forms: with ``u = [phi, 1]`` and ``p = softmax``,
``grad L = u (p - e_y)^T`` and ``d^2 L = (u u^T) kron (diag p - p p^T)``.
Softmax is invariant to adding a constant to all logits, so ``H`` is singular
and ``damping > 0`` is required.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from flax import struct

from rattr_jax import _validation as V
from rattr_jax.influence._last_layer import LastLayer


def _augment(phi):
  return jnp.concatenate([phi, jnp.ones((phi.shape[0], 1), phi.dtype)], axis=1)


def _probs(layer_w, phi, ):
  return jax.nn.softmax(_augment(phi) @ layer_w, axis=-1)


def _weights(last: LastLayer):
  """``W_aug [D + 1, C]``: the kernel with the bias as its last row."""
  return jnp.concatenate([last.kernel, last.bias[None]], axis=0)


def per_example_gradients(w_aug: jax.Array, phi: jax.Array, y: jax.Array) -> jax.Array:
  """``grad_theta L(z_i)`` flattened in ``(d, c)`` order, ``[N, (D + 1) C]``."""
  u = _augment(phi)
  p = jax.nn.softmax(u @ w_aug, axis=-1)
  r = p - jax.nn.one_hot(y, w_aug.shape[1], dtype=p.dtype)
  return (u[:, :, None] * r[:, None, :]).reshape(phi.shape[0], -1)


def hessian_from_features(w_aug: jax.Array, phi: jax.Array) -> jax.Array:
  """Exact mean cross-entropy Hessian in the last layer, ``[P, P]`` (``(d, c)`` order)."""
  u = _augment(phi)
  p = jax.nn.softmax(u @ w_aug, axis=-1)
  a = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]  # [N, C, C]
  h = jnp.einsum("nd,ne,ncf->dcef", u, u, a) / phi.shape[0]
  dc = w_aug.shape[0] * w_aug.shape[1]
  return h.reshape(dc, dc)


def features(features_fn: Callable, x: jax.Array, chunk_size: int | None) -> jax.Array:
  """``features_fn`` over ``x`` in chunks of ``chunk_size`` (jitted, `lax.map`)."""
  if chunk_size is None or chunk_size >= x.shape[0]:
    return jax.jit(features_fn)(x)
  n = x.shape[0]
  nb = -(-n // chunk_size)
  pad = nb * chunk_size - n
  xp = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0) if pad else x
  out = jax.jit(lambda z: jax.lax.map(features_fn, z))(
      xp.reshape((nb, chunk_size) + x.shape[1:]))
  return out.reshape((nb * chunk_size,) + out.shape[2:])[:n]


@struct.dataclass
class InfluenceState:
  """A fitted last-layer influence model (a pytree; pass it to jitted code).

  Attributes:
    features_fn: penultimate features ``[B, *F] -> [B, D]`` (static).
    w_aug: ``[D + 1, C]`` last-layer kernel with the bias as the last row.
    train_directions: ``[N, P]`` rows ``(H + lambda I)^{-1} grad L(z_i)``.
    hessian: ``[P, P]`` the damped Hessian ``H + lambda I``.
    damping: ``lambda``.
  """

  features_fn: Callable = struct.field(pytree_node=False)
  w_aug: jax.Array
  train_directions: jax.Array
  hessian: jax.Array
  damping: jax.Array

  def logits(self, x: jax.Array) -> jax.Array:
    """The model's logits ``[B, C]``."""
    return _augment(self.features_fn(x)) @ self.w_aug

  @property
  def num_train(self) -> int:
    return self.train_directions.shape[0]


@jax.jit
def _fit(w_aug, phi, y, damping):
  h = hessian_from_features(w_aug, phi)
  h = h + damping * jnp.eye(h.shape[0], dtype=h.dtype)
  g = per_example_gradients(w_aug, phi, y)
  chol = jsl.cho_factor(h, lower=True)
  return jsl.cho_solve(chol, g.T).T, h


def fit_influence(last: LastLayer, x_train, y_train, *, damping: float = 0.01,
                  chunk_size: int | None = 500) -> InfluenceState:
  """Fits the exact damped last-layer Hessian and the training directions.

  Cost: one feature pass over the training set, an ``O(N D^2 C^2)`` Hessian
  and a Cholesky solve of size ``P = (D + 1) C`` (650 for the MNIST CNN).

  Args:
    last: the model split by `last_layer`.
    x_train: ``[N, *F]`` training inputs.
    y_train: ``[N]`` int training labels.
    damping: ``lambda > 0`` added to the Hessian's diagonal.
    chunk_size: training inputs per feature chunk (memory bound).

  Returns:
    `InfluenceState`.

  References:
    Koh, Liang, "Understanding Black-box Predictions via Influence
    Functions", ICML 2017. https://arxiv.org/abs/1703.04730
  """
  x_train = V.check_batch(x_train, name="x_train")
  y = jnp.asarray(y_train)
  if y.ndim != 1 or y.shape[0] != x_train.shape[0] or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"`y_train` must be an int array [N] = [{x_train.shape[0]}]; got "
                     f"shape {tuple(y.shape)} and dtype {y.dtype}.")
  V.check_positive(damping, name="damping")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  w_aug = _weights(last)
  num_classes = w_aug.shape[1]
  if V.is_concrete(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
    raise ValueError(f"`y_train` must lie in [0, {num_classes}).")
  phi = features(last.features_fn, x_train, chunk_size)
  if phi.ndim != 2 or phi.shape[1] + 1 != w_aug.shape[0]:
    raise ValueError(f"`last.features_fn` must return [N, {w_aug.shape[0] - 1}] features; "
                     f"got {tuple(phi.shape)}.")
  dirs, h = _fit(w_aug, phi, y.astype(jnp.int32), jnp.asarray(damping, phi.dtype))
  return InfluenceState(last.features_fn, w_aug, dirs, h, jnp.asarray(damping, phi.dtype))


def influence_from_features(state: InfluenceState, phi: jax.Array, y: jax.Array) -> jax.Array:
  """``I(z_i, z_t)`` for test features ``phi [B, D]`` and labels ``y [B]``: ``[B, N]``."""
  g = per_example_gradients(state.w_aug, phi, y)
  return -g @ state.train_directions.T


@functools.partial(jax.jit)
def _influence(state, x, y):
  return influence_from_features(state, state.features_fn(x), y)


def influence(state: InfluenceState, x, target) -> jax.Array:
  """Influence ``I(z_i, (x_b, target_b))`` of every training point, ``[B, N]``.

  ``I = -grad L(z_t)^T (H + lambda I)^{-1} grad L(z_i)``, the first-order
  change of the test loss when training point ``i`` is up-weighted by a small
  ``epsilon`` (per unit ``epsilon``; ``I / N`` for removing it). **Negative =
  helpful** (up-weighting lowers the test loss); `top_influential` ranks by
  helpfulness ``-I``.

  Args:
    state: a fitted `InfluenceState`.
    x: test inputs ``[B, *F]``.
    target: test labels, an int or ``[B]`` (the label whose loss is explained,
      usually the predicted one).
  """
  x = V.check_batch(x)
  t = V.check_target(target, x.shape[0], state.w_aug.shape[1])
  return _influence(state, x, t)


def top_influential(scores: jax.Array, k: int) -> jax.Array:
  """Indices ``[B, k]`` of the ``k`` most helpful training points (most negative ``I``)."""
  scores = V.check_batch(scores, name="scores", min_rank=2, max_rank=2)
  k = V.check_positive_int(k, name="k")
  if k > scores.shape[1]:
    raise ValueError(f"`k` ({k}) must not exceed the number of training points "
                     f"({scores.shape[1]}).")
  return jax.lax.top_k(-scores, k)[1]
