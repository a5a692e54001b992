"""Known problems with closed-form answers, shared by tests, benchmarks and notebooks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LinearModel(NamedTuple):
  """``fn(x) = flatten(x) @ W.T + b`` with ``W [C, F]``: gradient = ``W[target]``."""

  W: jax.Array
  b: jax.Array

  def __call__(self, x):
    return x.reshape(x.shape[0], -1) @ self.W.T + self.b


def linear_model(key, num_features: int, num_classes: int, dtype=jnp.float32) -> LinearModel:
  k1, k2 = jax.random.split(key)
  return LinearModel(jax.random.normal(k1, (num_classes, num_features), dtype),
                     jax.random.normal(k2, (num_classes,), dtype))


class QuadraticModel(NamedTuple):
  """Logit ``c``: ``0.5 x^T A_c x + b_c^T x`` with symmetric ``A [C, F, F]``.

  Gradient ``A_c x + b_c``; input Hessian ``A_c``.
  """

  A: jax.Array
  b: jax.Array

  def __call__(self, x):
    f = x.reshape(x.shape[0], -1)
    return 0.5 * jnp.einsum("bi,cij,bj->bc", f, self.A, f) + f @ self.b.T


def quadratic_model(key, num_features: int, num_classes: int = 2,
                    dtype=jnp.float32) -> QuadraticModel:
  k1, k2 = jax.random.split(key)
  m = jax.random.normal(k1, (num_classes, num_features, num_features), dtype)
  a = 0.5 * (m + jnp.swapaxes(m, 1, 2)) / np.sqrt(num_features)
  return QuadraticModel(a, jax.random.normal(k2, (num_classes, num_features), dtype))


def finite_difference_grad(f: Callable[[np.ndarray], float], x: np.ndarray,
                           eps: float = 1e-6) -> np.ndarray:
  """Central finite differences of a scalar function (use float64)."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  flat = x.reshape(-1)
  gf = g.reshape(-1)
  for i in range(flat.size):
    e = np.zeros_like(flat)
    e[i] = eps
    gf[i] = (f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * eps)
  return g


def finite_difference_jvp(f: Callable, x, v, eps: float = 1e-6):
  """Central finite-difference directional derivative ``(f(x+eps v) - f(x-eps v)) / 2eps``."""
  return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@functools.lru_cache(maxsize=4)
def trained_mnist_cnn(epochs: int = 3, seed: int = 0, activation: str = "relu"):
  """A small MNIST CNN trained on the embedded dataset (about 10 s on 2 cores).

  Returns ``(model, dataset)``; cached per process.
  """
  from rattr_jax import models
  from rattr_jax._quicktrain import fit
  from rattr_jax.data import load_dataset
  d = load_dataset("mnist_embedded", seed=seed)
  m = models.create_model("cnn", input_shape=d.input_shape, num_classes=10,
                          activation=activation, seed=seed)
  return fit(m, d.x_train, d.y_train, epochs=epochs, seed=seed), d


class TanhMLP:
  """A small smooth classifier ``tanh(x W1) W2`` (hashable by identity, pure).

  Args:
    key: PRNG key for the weights.
    d: number of input features (inputs are flattened).
    h: hidden width.
    c: number of classes.
  """

  def __init__(self, key, d: int, h: int, c: int):
    k1, k2 = jax.random.split(key)
    self.w1 = jax.random.normal(k1, (d, h)) / np.sqrt(d)
    self.w2 = jax.random.normal(k2, (h, c)) / np.sqrt(h)

  def __call__(self, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ self.w1) @ self.w2
