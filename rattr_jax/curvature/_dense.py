"""Dense input Hessians, for small inputs only (tests, toy problems)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax.curvature import _hvp


@jit_with_callables(static_argnames=("objective", "mode", "chunk_size"))
def _dense_hessian(fn, x, t, objective, mode, chunk_size):
  bsz = x.shape[0]
  n = _hvp.num_features(x)
  _, op = _hvp.input_hessian_operator(fn, x, t, objective, mode)
  eye = jnp.eye(n, dtype=x.dtype)

  def column(e):  # the same basis vector for every example
    return op(jnp.broadcast_to(e, (bsz, n)).reshape(x.shape)).reshape(bsz, n)

  cols = jax.lax.map(column, eye, batch_size=chunk_size)             # [n, B, n]
  h = jnp.transpose(cols, (1, 2, 0))
  return 0.5 * (h + jnp.swapaxes(h, 1, 2))


def dense_hessian(fn: Callable, x: jax.Array, target: Target, *, objective: str = "logit",
                  mode: str = "auto", max_features: int = 4096,
                  chunk_size: int | None = 64) -> jax.Array:
  """The full input Hessian ``[B, n, n]`` of each example (explicit small-input option).

  Built column by column from ``n`` batched Hessian-vector products and
  symmetrised. Memory is ``B n^2``; inputs with more than ``max_features``
  features are refused. Every other function in `rattr_jax.curvature` is
  matrix-free.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]`` with ``n = prod(F) <= max_features``.
    target: an int or an int array ``[B]``.
    objective: ``"logit"`` or ``"loss"``.
    mode: as in `hvp`.
    max_features: the largest ``n`` accepted.
    chunk_size: columns computed at once.

  Returns:
    ``[B, n, n]`` with ``n`` the flattened feature index of ``x[b]``.
  """
  x, t, mode = _hvp.prepare(fn, x, target, objective, mode)
  max_features = V.check_positive_int(max_features, name="max_features")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  n = _hvp.num_features(x)
  if n > max_features:
    raise ValueError(
        f"`x` has {n} features per example, more than `max_features` ({max_features}); a dense "
        "Hessian would need B*n^2 floats. Use the matrix-free functions (hvp, hessian_eigs) or "
        "raise `max_features` explicitly.")
  return _dense_hessian(fn, x, t, objective, mode, chunk_size)
