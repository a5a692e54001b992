"""Layers shared by the model zoo."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


@jax.custom_jvp
def _max4(x):
  """Max over axes 2 and 4 of ``[B, H2, 2, W2, 2, C]`` (the 2x2 windows)."""
  return x.max(axis=(2, 4))


@_max4.defjvp
def _max4_jvp(primals, tangents):
  # PyTorch's tie rule: the derivative is that of the FIRST maximum of the
  # window in row-major order (jnp.max would split it evenly between ties).
  (x,), (t,) = primals, tangents
  m = x.max(axis=(2, 4))
  out = t[:, :, 1, :, 1]
  for p, q in ((1, 0), (0, 1), (0, 0)):  # later positions first, so the first max wins
    out = jnp.where(x[:, :, p, :, q] == m, t[:, :, p, :, q], out)
  return m, out


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 (odd trailing rows/columns are dropped).

  Written as reshape + max (measured faster than `lax.reduce_window` on CPU).
  Its derivative follows PyTorch's ``max_pool2d`` (and `lax.reduce_window`):
  when several elements of a window tie for the maximum (e.g. a window of
  zeros in an MNIST background), the whole gradient goes to the first of them
  in row-major order, not split between them. Forward- and reverse-mode, to
  any order.
  """
  b, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2]
  return _max4(x.reshape(b, h // 2, 2, w // 2, 2, c))


def avg_pool_global(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))
