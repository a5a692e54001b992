"""SmoothGrad, its squared variant, and VarGrad."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from rattr_jax import _random
from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.attribution import _integrated
from rattr_jax import core


def noise_scale(x: jax.Array, stddev) -> jax.Array:
  """Per-example noise standard deviation ``stddev * (max(x_b) - min(x_b))``.

  This is PAIR saliency's ``stdev_spread`` convention: ``stddev`` is a fraction
  of each example's input range. Returns shape ``[B, 1, ..., 1]``.
  """
  axes = tuple(range(1, x.ndim))
  spread = jnp.max(x, axis=axes, keepdims=True) - jnp.min(x, axis=axes, keepdims=True)
  return stddev * spread


def noisy_gradient_moments(fn, x, t, key, stddev, num_samples, chunk_size,
                           moments=(1, 2)):
  """First and second moments of the target gradient at ``x + N(0, sigma^2)``.

  Noise samples are drawn per chunk inside a `lax.scan`; each chunk of
  ``chunk_size`` samples is a single call of ``fn`` on ``chunk_size * B`` inputs
  (``None``: `rattr_jax.attribution._integrated.auto_chunk`).
  Sample ``s`` of the whole batch uses ``jax.random.fold_in(key, s)``.
  ``moments`` (static) names the moments to accumulate; the others are
  returned as ``None`` (a loop-carried sum is not dead-code eliminated, so an
  unused second moment would cost a pass over every chunk).
  """
  s_total = num_samples
  bs = (_integrated.auto_chunk(s_total, x.shape) if chunk_size is None
        else min(chunk_size, s_total))
  num_chunks = -(-s_total // bs)
  sigma = noise_scale(x, stddev)
  bsz, feat = x.shape[0], x.shape[1:]

  def chunk(c):
    idx = c * bs + jnp.arange(bs)
    valid = (idx < s_total).astype(x.dtype)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    eps = jax.vmap(lambda k: _random.normal(k, x.shape, x.dtype))(keys)
    pts = (x[None] + sigma[None] * eps).reshape((bs * bsz,) + feat)
    g = core.target_gradient(fn, pts, jnp.tile(t, bs)).reshape((bs, bsz) + feat)
    return tuple(jnp.tensordot(valid, g if m == 1 else g * g, axes=1) for m in moments)

  if num_chunks == 1:
    sums = chunk(jnp.asarray(0))  # no remat: one chunk is the memory peak anyway
  else:
    chunk = jax.checkpoint(chunk)  # bounded memory when differentiated through
    def body(acc, c):
      return tuple(a + b for a, b in zip(acc, chunk(c))), None
    sums, _ = jax.lax.scan(body, tuple(jnp.zeros_like(x) for _ in moments),
                           jnp.arange(num_chunks))
  out = dict(zip(moments, (v / s_total for v in sums)))
  return out.get(1), out.get(2)


@jit_with_callables(static_argnames=("num_samples", "squared", "chunk_size"))
def _smoothgrad(fn, x, t, key, stddev, num_samples, squared, chunk_size):
  m1, m2 = noisy_gradient_moments(fn, x, t, key, stddev, num_samples, chunk_size,
                                  moments=(2,) if squared else (1,))
  return m2 if squared else m1


@jit_with_callables(static_argnames=("num_samples", "chunk_size"))
def _vargrad(fn, x, t, key, stddev, num_samples, chunk_size):
  m1, m2 = noisy_gradient_moments(fn, x, t, key, stddev, num_samples, chunk_size)
  return jnp.maximum(m2 - m1 * m1, 0.0)


def _check(fn, x, target, key, num_samples, stddev, chunk_size):
  x, t = core.prepare(fn, x, target)
  V.check_key(key)
  V.check_positive_int(num_samples, name="num_samples")
  V.check_nonnegative(stddev, name="stddev")
  V.check_optional_positive_int(chunk_size, name="chunk_size")
  return x, t


def smoothgrad(fn: Callable, x: Float[Array, "B ..."], target: Target, *, key: PRNGKey,
               num_samples: int = 50, stddev: float = 0.15, squared: bool = False,
               chunk_size: int | None = None) -> Float[Array, "B ..."]:
  """SmoothGrad: the mean gradient over Gaussian-perturbed copies of ``x``.

  ``SG(x) = 1/N sum_n grad f_target(x + eps_n)``, ``eps_n ~ N(0, sigma^2 I)``,
  with ``sigma = stddev * (max(x_b) - min(x_b))`` per example. With
  ``squared=True`` it averages the squared gradients (SmoothGrad-SQ).

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: PRNG key (required); the same key gives the same result.
    num_samples: number of noise samples ``N``.
    stddev: noise level as a fraction of each example's input range.
      ``stddev -> 0`` recovers `gradient`.
    squared: average squared gradients instead.
    chunk_size: noise samples evaluated at once; bounds memory by
      ``chunk_size * B`` inputs. ``None`` chooses it automatically (about
      2**16 input elements per chunk, all samples when they fit; see
      `integrated_gradients`). The result does not depend on it beyond float
      rounding: sample ``s`` always uses ``fold_in(key, s)``.

  Returns:
    Attribution ``[B, *F]``.

  References:
    Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.
    https://arxiv.org/abs/1706.03825
  """
  x, t = _check(fn, x, target, key, num_samples, stddev, chunk_size)
  return _smoothgrad(fn, x, t, key, np.asarray(stddev, x.dtype), num_samples,
                     bool(squared), chunk_size)


def vargrad(fn: Callable, x: Float[Array, "B ..."], target: Target, *, key: PRNGKey,
            num_samples: int = 50, stddev: float = 0.15,
            chunk_size: int | None = None) -> Float[Array, "B ..."]:
  """VarGrad: the per-feature variance of noisy gradients.

  ``VG(x) = 1/N sum_n g_n^2 - (1/N sum_n g_n)^2`` with the noise of `smoothgrad`
  (Captum's NoiseTunnel ``vargrad``, population variance).

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: PRNG key (required).
    num_samples: number of noise samples.
    stddev: noise level as a fraction of each example's input range.
    chunk_size: noise samples evaluated at once (bounds memory); ``None``
      chooses it automatically, as in `smoothgrad`.

  Returns:
    Non-negative attribution ``[B, *F]``.

  References:
    Adebayo et al., "Local Explanation Methods for Deep Neural Networks Lack
    Sensitivity to Parameter Values", 2018. https://arxiv.org/abs/1810.03307
  """
  x, t = _check(fn, x, target, key, num_samples, stddev, chunk_size)
  return _vargrad(fn, x, t, key, np.asarray(stddev, x.dtype), num_samples, chunk_size)
