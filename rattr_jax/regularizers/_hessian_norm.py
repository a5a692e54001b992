"""Input-Hessian Frobenius-norm penalty (Hutchinson estimate), the curvature baseline."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _random
from rattr_jax import _jit
from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax import core
from rattr_jax.regularizers import _common

_MODE_CACHE: dict = {}
MODES = ("auto", "forward_over_reverse", "reverse_over_reverse")


def target_hvp(fn: Callable, x: jax.Array, t: jax.Array, v: jax.Array,
               mode: str = "forward_over_reverse") -> jax.Array:
  """Per-example input-Hessian-vector products ``H_b v_b`` of the target logits.

  ``forward_over_reverse``: ``jax.jvp`` of the input gradient (needs a model
  with forward-mode support: every `rattr_jax.models` layer has it, the fast
  CPU convolution included). ``reverse_over_reverse``: the gradient of
  ``<g(x), v>``, as in the reference PyTorch code; also works through a
  `jax.custom_vjp`. Both are exact and equal.
  """
  grad_fn = lambda z: core.target_gradient(fn, z, t)  # noqa: E731
  if mode == "auto":
    mode = _resolve_mode(fn, x, t)
  if mode == "forward_over_reverse":
    return jax.jvp(grad_fn, (x,), (v,))[1]
  return jax.grad(lambda z: jnp.sum(grad_fn(z) * v))(x)


def hessian_mode(fn: Callable, x: jax.Array, target: Target) -> str:
  """The HVP mode ``hessian_norm(mode="auto")`` picks for ``fn`` at inputs shaped like ``x``.

  ``forward_over_reverse`` if ``fn`` supports `jax.jvp`, else ``reverse_over_reverse``.
  Call it outside a trace (training terms resolve it once, before compiling).

  Decided by lowering (no FLOPs; the error surfaces only at lowering) and
  cached per function structure and shape: a model with a `jax.custom_vjp`
  layer has no forward-mode rule (`rattr_jax.models`' layers all have one).
  """
  x, t = _common.prepare(fn, x, target)
  return _resolve_mode(fn, x, t)


def _resolve_mode(fn: Callable, x: jax.Array, t: jax.Array) -> str:
  _, static = _jit.partition(fn)
  cache_key = (static, tuple(x.shape), str(x.dtype))
  try:
    return _MODE_CACHE[cache_key]
  except (KeyError, TypeError):
    pass
  # The regularizer is differentiated again (training), so the probe is the
  # gradient of a forward-over-reverse HVP: with jax 0.10 a `custom_vjp`
  # layer lowers under `jax.jvp` of `jax.grad`, and fails only one level up
  # (NotImplementedError: no differentiation rule for 'custom_lin').
  def probe(z, v):
    hvp = lambda w: jax.jvp(lambda u: core.target_gradient(fn, u, t), (w,), (v,))[1]  # noqa: E731
    return jax.grad(lambda w: jnp.sum(hvp(w)))(z)
  try:
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    jax.jit(probe).lower(spec, spec)
    mode = "forward_over_reverse"
  except (TypeError, NotImplementedError):
    mode = "reverse_over_reverse"
  try:
    _MODE_CACHE[cache_key] = mode
  except TypeError:
    pass
  return mode


def hessian_norm_values(fn: Callable, x: jax.Array, t: jax.Array, *, key: jax.Array,
                        num_samples: int = 1, mode: str = "forward_over_reverse") -> jax.Array:
  """Unvalidated core of `hessian_norm`: per-example estimates ``[B]``."""
  def one(k):
    v = _random.normal(k, x.shape, x.dtype)
    hv = target_hvp(fn, x, t, v, mode)
    return _common.per_example_sum(hv * hv)

  if num_samples == 1:
    return one(key)
  keys = jax.random.split(key, num_samples)
  total = jax.lax.scan(lambda acc, k: (acc + one(k), None), jnp.zeros(x.shape[:1], x.dtype),
                       keys)[0]
  return total / num_samples


@jit_with_callables(static_argnames=("num_samples", "mode", "reduction"))
def _hessian_norm(fn, x, t, key, num_samples, mode, reduction):
  vals = hessian_norm_values(fn, x, t, key=key, num_samples=num_samples, mode=mode)
  return _common.reduce(vals, reduction)


def hessian_norm(fn: Callable, x: Float[Array, "B ..."], target: Target, *,
                 key: jax.Array, num_samples: int = 1, mode: str = "auto",
                 reduction: str = "mean") -> jax.Array:
  """Hutchinson estimate of the squared Frobenius norm of the input Hessian.

  ``R(x) = (1/S) sum_s ||H(x) v_s||^2`` with ``v_s ~ N(0, I)`` and
  ``H(x) = d^2 f_y / dx^2`` the input Hessian of the true-class logit, an
  unbiased estimate of ``||H(x)||_F^2`` (``E ||H v||^2 = tr(H^T H)``). This is
  the Dombrowski et al. curvature penalty used as the baseline of Joo et al.
  (one ``v`` per step, ``lambda = 1e-3`` on the CIFAR LeNet). It is exactly
  zero for a model that is linear (or piecewise linear, e.g. ReLU) in ``x``.
  Lower is better. The Hessian is never formed: each sample is one
  Hessian-vector product.

  Args:
    fn: model, ``[B, *F] -> [B, C]`` logits (examples must not interact).
    x: inputs ``[B, *F]``.
    target: true classes, an int or ``[B]``.
    key: PRNG key for the probe vectors.
    num_samples: probe vectors per example.
    mode: ``"forward_over_reverse"`` (`jax.jvp` of the input gradient, which
      needs forward-mode support; `rattr_jax.models`' layers have it),
      ``"reverse_over_reverse"`` (gradient of ``<g, v>``; also through a
      `jax.custom_vjp`), or ``"auto"``
      (default): forward-over-reverse when ``fn`` supports `jax.jvp`,
      otherwise reverse-over-reverse. All give the same values.
    reduction: ``"mean"`` over the batch or ``"none"`` (``[B]``).

  Returns:
    A scalar, or ``[B]`` per-example estimates.

  References:
    Dombrowski et al., "Explanations can be manipulated and geometry is to
    blame", NeurIPS 2019. https://arxiv.org/abs/1906.07983
    Hutchinson, "A stochastic estimator of the trace of the influence matrix",
    1989.
  """
  x, t = _common.prepare(fn, x, target)
  V.check_key(key)
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  V.check_choice(mode, MODES, name="mode")
  V.check_choice(reduction, _common.REDUCTIONS, name="reduction")
  if mode == "auto":
    mode = _resolve_mode(fn, x, t)
  return _hessian_norm(fn=fn, x=x, t=t, key=key, num_samples=num_samples, mode=mode,
                       reduction=reduction)
