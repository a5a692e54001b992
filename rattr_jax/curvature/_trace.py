"""Hutchinson estimates of the trace and Frobenius norm of input Hessians."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rattr_jax import _random
from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax.curvature import _hvp
from rattr_jax.curvature._results import StochasticEstimate


def probe_products(op: Callable, x: jax.Array, key: jax.Array, num_samples: int,
                   chunk_size: int | None) -> tuple[jax.Array, jax.Array]:
  """``v^T H v`` and ``||H v||^2`` per example for Rademacher probes, ``[B, S]`` each."""
  axes = tuple(range(1, x.ndim))

  def one(kk):
    v = _random.rademacher(kk, x.shape, x.dtype)
    hv = op(v)
    return jnp.sum(v * hv, axis=axes), jnp.sum(hv * hv, axis=axes)

  quad, sq = jax.lax.map(one, jax.random.split(key, num_samples), batch_size=chunk_size)
  return quad.T, sq.T


def mean_and_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean over the last axis and its standard error (``inf`` for one sample)."""
  s = samples.shape[-1]
  mean = jnp.mean(samples, axis=-1)
  if s == 1:
    return mean, jnp.full_like(mean, jnp.inf)
  return mean, jnp.std(samples, axis=-1, ddof=1) / jnp.sqrt(s)


@jit_with_callables(static_argnames=("num_samples", "objective", "mode", "chunk_size"))
def _estimate(fn, x, t, key, num_samples, objective, mode, chunk_size):
  """Both estimates from the same probes (one compilation serves both functions)."""
  _, op = _hvp.input_hessian_operator(fn, x, t, objective, mode)
  quad, sq = probe_products(op, x, key, num_samples, chunk_size)
  mean, se = mean_and_stderr(quad)
  trace = StochasticEstimate(mean, se, quad)
  mean, se = mean_and_stderr(sq)
  norm = jnp.sqrt(mean)
  # Delta method: se(sqrt(m)) = se(m) / (2 sqrt(m)); a zero Hessian has zero samples, so 0.
  se_norm = jnp.where(norm > 0, se / (2 * jnp.where(norm > 0, norm, 1)), 0)
  return trace, StochasticEstimate(norm, se_norm, sq)


def _prepare(fn, x, target, key, num_samples, objective, mode, chunk_size):
  x, t, mode = _hvp.prepare(fn, x, target, objective, mode)
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  key = V.check_key(key)
  return x, t, key, num_samples, mode, chunk_size


def hutchinson_trace(fn: Callable, x: jax.Array, target: Target, *, key: jax.Array,
                     num_samples: int = 16, objective: str = "logit", mode: str = "auto",
                     chunk_size: int | None = None) -> StochasticEstimate:
  """Hutchinson estimate of ``tr H_b`` (the Laplacian of the target logit).

  ``tr H = E[v^T H v]`` for Rademacher ``v``; the estimate is the mean of
  ``num_samples`` probes (one batched HVP each) with its standard error. Its
  variance is ``2 sum_{i != j} H_ij^2 / num_samples``.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    key: PRNG key.
    num_samples: number of probes, ``> 0``.
    objective: ``"logit"`` or ``"loss"``.
    mode: as in `hvp`.
    chunk_size: probes processed at once; ``None`` for all.

  Returns:
    A `StochasticEstimate` (``estimate``, ``stderr``, ``samples`` ``[B, S]``).
    Zero with zero error for ReLU networks (logit objective).

  References:
    Hutchinson, "A stochastic estimator of the trace of the influence matrix
    for Laplacian smoothing splines", 1989.
  """
  x, t, key, num_samples, mode, chunk_size = _prepare(fn, x, target, key, num_samples,
                                                      objective, mode, chunk_size)
  return _estimate(fn, x, t, key, num_samples, objective, mode, chunk_size)[0]


def hessian_frobenius_norm(fn: Callable, x: jax.Array, target: Target, *, key: jax.Array,
                           num_samples: int = 16, objective: str = "logit",
                           mode: str = "auto", chunk_size: int | None = None
                           ) -> StochasticEstimate:
  """Hutchinson estimate of ``||H_b||_F``.

  ``||H||_F^2 = E ||H v||^2`` for Rademacher ``v``; the estimate is the square
  root of the sample mean, and its standard error the delta-method error
  ``se(||H||_F^2) / (2 ||H||_F)``. ``samples`` holds the per-probe values of
  ``||H v||^2``. Lower means a flatter explanation (Ghorbani et al. link the
  Hessian to fragility).

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    key: PRNG key.
    num_samples: number of probes, ``> 0``.
    objective: ``"logit"`` or ``"loss"``.
    mode: as in `hvp`.
    chunk_size: probes processed at once; ``None`` for all.

  Returns:
    A `StochasticEstimate` of the norm.

  References:
    Hutchinson, 1989; Avron & Toledo, "Randomized algorithms for estimating
    the trace of an implicit symmetric positive semi-definite matrix", J. ACM
    2011.
  """
  x, t, key, num_samples, mode, chunk_size = _prepare(fn, x, target, key, num_samples,
                                                      objective, mode, chunk_size)
  return _estimate(fn, x, t, key, num_samples, objective, mode, chunk_size)[1]
