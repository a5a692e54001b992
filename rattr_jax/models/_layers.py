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


def _windows(x):
  """``[B, 2 H2, 2 W2, C] -> [B, H2, W2, C, 4]``: each 2x2 window, in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // 2, w // 2, c, 4)


@jax.custom_jvp
def _max4(x):
  """Max over each 2x2 window of ``[B, 2 H2, 2 W2, C]``."""
  return jnp.max(_windows(x), -1)


@_max4.defjvp
def _max4_jvp(primals, tangents):
  # PyTorch's tie rule: the derivative is that of the FIRST maximum of the
  # window in row-major order (jnp.max would split it evenly between ties).
  # One argmax per window, and the tangent picked by that index: an earlier
  # form compared each of the four positions with the max, and XLA fused the
  # (recomputed) activation into every comparison: softplus + pool backward
  # on the MNIST CNN's first layer at batch 128 took 13.6 ms, now 6.8 ms
  # (README, "Training steps against plain PyTorch").
  (x,), (t,) = primals, tangents
  r = _windows(x)
  i = jnp.argmax(r, -1)
  m = jnp.take_along_axis(r, i[..., None], -1)[..., 0]
  pick = i[..., None] == jnp.arange(4, dtype=i.dtype)
  return m, jnp.sum(jnp.where(pick, _windows(t), jnp.zeros((), t.dtype)), -1)


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
