"""Layers shared by the model zoo."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rattr_jax.models import _conv


class Conv2D(nnx.Module):
  """NHWC convolution whose autodiff implementation is a setting (`conv_impl`).

  Attributes:
    conv_impl: ``"auto"``, ``"fast"`` or ``"lax"``; see `rattr_jax.models.conv2d`.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               stride: int = 1, padding="SAME", use_bias: bool = True,
               conv_impl: str = "auto", rngs: nnx.Rngs):
    k = (kernel_size, kernel_size)
    init = nnx.initializers.lecun_normal()
    # float32 parameters, as nnx.Linear's, also when jax_enable_x64 is on.
    self.kernel = nnx.Param(init(rngs.params(), k + (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
    self.stride = (stride, stride)
    self.padding = padding
    self.conv_impl = _conv.resolve_impl(conv_impl) if conv_impl != "auto" else "auto"

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    dtype = jnp.result_type(x, kernel)  # e.g. float64 inputs with x64 on: a float64 conv
    y = _conv.conv2d(x.astype(dtype), kernel.astype(dtype), stride=self.stride,
                     padding=self.padding, impl=self.conv_impl)
    if self.bias is not None:
      y = y + self.bias[...]
    return y


#: How the pool's value is computed where it is not differentiated (evaluation,
#: attack loops' label checks, metrics): ``"pairs"`` (the four corners of each
#: window as ``[B, H2, W2, C]`` views of one reshape, `_pairs`, and three
#: elementwise maxima: the activation before the pool fuses into one plain loop)
#: or ``"windows"`` (``max`` over `_windows`' window axis; the form before, for
#: `benchmarks/fused_steps.py`). With ``"windows"`` XLA:CPU fused the softplus
#: into the reduction and emitted it slowly: the MNIST CNN's first layer
#: (convolution, bias, softplus-3, pool) at batch 128, 3.5 against 1.0 ms alone;
#: its whole forward 6.0 against 4.3 ms. The derivative rule keeps the window
#: axis: the corner views' transposes (pads) made gradient-alignment and PGD-AT
#: steps 0.83-0.90x. Read when traced.
POOL_FORWARD = "pairs"
#: Where `_windows` puts the window axis (the derivative rule's, and the value's
#: with ``POOL_FORWARD="windows"``): ``-2``
#: (``[B, H2, W2, 4, C]``, channels stay the contiguous minor axis, so the pool
#: and its derivative vectorize over them and its transposes move whole channel
#: rows) or ``-1`` (``[B, H2, W2, C, 4]``, the layout before; for
#: `benchmarks/fused_steps.py`). Read when traced.
WINDOW_AXIS = -2
#: How the pool's derivative rule computes its value (the primal output) next to
#: the argmax: ``"reduce"`` (one variadic reduction yields both the first maximum's
#: value and its index, `_first_max`), ``"select"`` (the window's element at the
#: argmax by a select and a 4-term sum over a ``[B, H2, W2, 4, C]`` array that
#: XLA:CPU builds in full, with the activation recomputed in it; the form before)
#: or ``"gather"`` (`take_along_axis`: a gather whose index array, 5 int32 per
#: element, XLA:CPU builds in full). Read when traced.
POOL_VALUE = "reduce"


def _windows(x):
  """``[B, 2 H2, 2 W2, C] -> [B, H2, W2, 4, C]``: each 2x2 window, in row-major order.

  (``[B, H2, W2, C, 4]`` with `WINDOW_AXIS` ``-1``.)
  """
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  if WINDOW_AXIS == -1:
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4, c)


def _pairs(x):
  """``[B, 2 H2, 2 W2, C]`` -> the four ``[B, H2, W2, C]`` corners of each window, row-major.

  One reshape (a bitcast) to ``[B, H2, 2, W2, 2 C]``: the window's rows are axis
  2, its two columns the halves of the channel axis.
  """
  b, h, w, c = x.shape
  r = x.reshape(b, h // 2, 2, w // 2, 2 * c)
  top, bottom = r[:, :, 0], r[:, :, 1]
  return top[..., :c], top[..., c:], bottom[..., :c], bottom[..., c:]


@jax.custom_jvp
def _max4(x):
  """Max over each 2x2 window of ``[B, 2 H2, 2 W2, C]``."""
  if POOL_FORWARD == "pairs":
    a, b, c, d = _pairs(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
  return jnp.max(_windows(x), WINDOW_AXIS)


@_max4.defjvp
def _max4_jvp(primals, tangents):
  # PyTorch's tie rule: the derivative is that of the FIRST maximum of the
  # window in row-major order (jnp.max would split it evenly between ties).
  (x,), (t,) = primals, tangents
  # One argmax per window, and the tangent picked by that index: an earlier
  # form compared each of the four positions with the max, and XLA fused the
  # (recomputed) activation into every comparison: softplus + pool backward
  # on the MNIST CNN's first layer at batch 128 took 13.6 ms, now 6.8 ms
  # (README, "Training steps against plain PyTorch").
  ax = WINDOW_AXIS
  r = _windows(x)
  if POOL_VALUE == "reduce":
    m, i = _first_max(r)
  else:
    i = jnp.argmax(r, ax)
    if POOL_VALUE == "select":
      m = _at_index(r, i)
    else:
      m = jnp.take_along_axis(r, jnp.expand_dims(i, ax), ax).squeeze(ax)
  return m, _at_index(_windows(t), i)


def _argmax_reducer(op, acc):
  """`lax.argmax`'s comparator: the larger value (a NaN wins), the lower index on ties."""
  (ov, oi), (av, ai) = op, acc
  pick_value = (ov > av) | (ov != ov)
  pick_index = pick_value | ((ov == av) & (oi < ai))
  return jnp.where(pick_value, ov, av), jnp.where(pick_index, oi, ai)


def _first_max(r):
  """``(value, index)`` of each window's first maximum along `WINDOW_AXIS` of `_windows`'
  output, from one variadic reduction (`jnp.argmax` computes the value too, then drops
  it). The value is differentiable (`_value_at`); the reduction itself never is."""
  ax = r.ndim + WINDOW_AXIS
  rc = jax.lax.stop_gradient(r)  # at higher orders: a zero tangent, no rule needed
  idx = jax.lax.broadcasted_iota(jnp.int32, r.shape, ax)
  init = (jnp.array(-jnp.inf, r.dtype), jnp.array(0, jnp.int32))
  m, i = jax.lax.reduce((rc, idx), init, _argmax_reducer, (ax,))
  return _value_at(r, i, m), i


def _at_index(a, i):
  """Each window's element at index ``i`` (``[B, H2, W2, C]`` ints) of `_windows`' output
  ``a``, by a select and a 4-term sum: linear in ``a``."""
  ax = WINDOW_AXIS
  pick = jnp.expand_dims(i, ax) == jnp.arange(4, dtype=i.dtype).reshape(
      (4, 1) if ax == -2 else (4,))
  return jnp.sum(jnp.where(pick, a, jnp.zeros((), a.dtype)), ax)


@jax.custom_jvp
def _value_at(r, i, m):
  """``m``, the value of ``r`` at window index ``i`` already computed, with the derivative
  of that value: the tangent at ``i`` (the pool's tie rule, at every order: the rule
  calls `_value_at` again and is linear in the tangent)."""
  del r, i
  return m


@_value_at.defjvp
def _value_at_jvp(primals, tangents):
  (r, i, m), (tr, _, _) = primals, tangents
  return _value_at(r, i, m), _at_index(tr, i)


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 (odd trailing rows/columns are dropped).

  Written as reshape + max (measured faster than `lax.reduce_window` on CPU).
  Its derivative follows PyTorch's ``max_pool2d`` (and `lax.reduce_window`):
  when several elements of a window tie for the maximum (e.g. a window of
  zeros in an MNIST background), the whole gradient goes to the first of them
  in row-major order, not split between them. Forward- and reverse-mode, to
  any order.
  """
  _, h, w, _ = x.shape
  return _max4(x[:, : h - h % 2, : w - w % 2])


def avg_pool_global(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))
