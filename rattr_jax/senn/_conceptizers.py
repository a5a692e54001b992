"""SENN conceptizers ``h``: identity (tabular) and a convolutional autoencoder (images).

A conceptizer maps ``x [B, *F]`` to ``(h [B, k], x_hat [B, *F])``: ``k``
scalar concepts and a reconstruction used by the concept loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rattr_jax.models import conv2d
from rattr_jax.models import Conv2D, max_pool2

CONCEPTIZERS = ("identity", "autoencoder")


class IdentityConceptizer(nnx.Module):
  """``h(x) = [x_1, ..., x_F, 1]``: the input features plus a constant bias concept.

  Used for tabular data (the paper's COMPAS/UCI models). The constant-1 concept
  makes ``theta_0`` act as a bias; it is the *last* concept. The reconstruction
  is ``x`` itself, so the reconstruction loss is zero and has no parameters.

  Attributes:
    num_features: ``F``, the flattened input size.
    bias: whether the constant concept is appended.
    num_concepts: ``F + 1`` (``F`` without the bias concept).
  """

  def __init__(self, num_features: int, *, bias: bool = True):
    self.num_features = int(num_features)
    self.bias = bool(bias)
    self.num_concepts = self.num_features + int(self.bias)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    f = x.reshape(x.shape[0], -1)
    if self.bias:
      f = jnp.concatenate([f, jnp.ones((f.shape[0], 1), f.dtype)], axis=1)
    return f, x


def _dilate(x: jax.Array, stride: int) -> jax.Array:
  """Inserts ``stride - 1`` zeros between pixels: ``[B, H, W, C] -> [B, (H-1)s+1, (W-1)s+1, C]``."""
  if stride == 1:
    return x
  b, h, w, c = x.shape
  z = jnp.zeros((b, h, stride, w, stride, c), x.dtype).at[:, :, 0, :, 0].set(x)
  return z.reshape(b, h * stride, w * stride, c)[:, :(h - 1) * stride + 1, :(w - 1) * stride + 1]


class _ConvTranspose(nnx.Module):
  """PyTorch-style ``ConvTranspose2d(cin, cout, k, stride, padding)`` in NHWC.

  Output side ``(n - 1) * stride - 2 * padding + k``, computed as a stride-1
  convolution of the zero-dilated input padded by ``k - 1 - padding``, through
  `rattr_jax.models.conv2d` so it stays on the fast CPU path under autodiff.
  """

  def __init__(self, cin: int, cout: int, kernel_size: int, *, stride: int = 1,
               padding: int = 0, conv_impl: str = "auto", rngs: nnx.Rngs):
    k = kernel_size
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (k, k, cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))
    self.stride = int(stride)
    self.pad = int(k - 1 - padding)
    self.conv_impl = conv_impl

  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.pad
    y = conv2d(_dilate(x, self.stride), self.kernel[...], padding=((p, p), (p, p)),
               impl=self.conv_impl)
    return y + self.bias[...]


def autoencoder_grid(image_size: int) -> int:
  """Side ``s`` of the encoder's last feature map: ``(image_size - 12) / 4``."""
  if image_size < 16 or image_size % 4:
    raise ValueError("The autoencoder conceptizer needs square images with a side >= 16 "
                     f"divisible by 4 (e.g. 28 or 32); got side {image_size}.")
  return (image_size - 12) // 4


class ConvConceptizer(nnx.Module):
  """The paper's convolutional autoencoder with ``k`` scalar concepts.

  Encoder (as ``image_cnn_conceptizer`` in dmelis/SENN): conv5x5(C->10, VALID)
  -> maxpool2 -> ReLU -> conv5x5(10->k, VALID) -> maxpool2 -> ReLU, giving ``k``
  maps of ``s x s`` (``s = 4`` on 28x28, ``5`` on 32x32); one ``Linear(s*s -> 1)``
  *shared by all concepts* (the original applies a single ``nn.Linear`` to the
  ``[B, k, s*s]`` tensor) turns each map into one scalar concept ``h_i``.

  Decoder: the shared ``Linear(1 -> s*s)``, then ConvT(k->16, 5, stride 2) ->
  ReLU -> ConvT(16->8, 5) -> ReLU -> ConvT(8->C, 2, stride 2, padding 1) -> tanh.

  The inputs of this library are in [0, 1], which a tanh decoder can reach
  (the original normalised MNIST to about [-0.42, 2.8], which it cannot).

  Attributes:
    num_concepts: ``k``.
    conv_impl: convolution autodiff implementation (see `rattr_jax.models.conv2d`).
  """

  def __init__(self, num_concepts: int, *, in_channels: int = 1, image_size: int = 28,
               conv_impl: str = "auto", rngs: nnx.Rngs):
    k = int(num_concepts)
    s = autoencoder_grid(image_size)
    self.num_concepts = k
    self.grid = s
    self.conv1 = Conv2D(in_channels, 10, 5, padding="VALID", conv_impl=conv_impl, rngs=rngs)
    self.conv2 = Conv2D(10, k, 5, padding="VALID", conv_impl=conv_impl, rngs=rngs)
    self.linear = nnx.Linear(s * s, 1, rngs=rngs)
    self.unlinear = nnx.Linear(1, s * s, rngs=rngs)
    self.deconv3 = _ConvTranspose(k, 16, 5, stride=2, conv_impl=conv_impl, rngs=rngs)
    self.deconv2 = _ConvTranspose(16, 8, 5, conv_impl=conv_impl, rngs=rngs)
    self.deconv1 = _ConvTranspose(8, in_channels, 2, stride=2, padding=1, conv_impl=conv_impl,
                                   rngs=rngs)

  def encode(self, x: jax.Array) -> jax.Array:
    """``x [B, H, W, C] -> h [B, k]``."""
    p = jax.nn.relu(max_pool2(self.conv1(x)))
    p = jax.nn.relu(max_pool2(self.conv2(p)))              # [B, s, s, k]
    b = p.shape[0]
    p = jnp.transpose(p, (0, 3, 1, 2)).reshape(b, self.num_concepts, -1)
    return self.linear(p)[..., 0]

  def decode(self, h: jax.Array) -> jax.Array:
    """``h [B, k] -> x_hat [B, H, W, C]`` in (-1, 1)."""
    b, s = h.shape[0], self.grid
    q = self.unlinear(h[..., None]).reshape(b, self.num_concepts, s, s)
    q = jnp.transpose(q, (0, 2, 3, 1))
    q = jax.nn.relu(self.deconv3(q))
    q = jax.nn.relu(self.deconv2(q))
    return jnp.tanh(self.deconv1(q))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = self.encode(x)
    return h, self.decode(h)


def num_features(input_shape) -> int:
  return math.prod(int(d) for d in input_shape)
