"""A small zoo of Flax NNX classifiers with a swappable activation.

Every model stores its activation as the static attribute ``activation`` (an
`Activation`) and every convolution its autodiff implementation as
``conv_impl``; `as_fn` swaps either on a view of the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rattr_jax.models._activation import Activation, as_activation
from rattr_jax.models._layers import Conv2D, avg_pool_global, max_pool2


class MLP(nnx.Module):
  """Multi-layer perceptron on flattened inputs ``[B, *F] -> [B, C]``."""

  def __init__(self, in_features: int, num_classes: int, *,
               hidden: Sequence[int] = (128, 128), activation="relu", rngs: nnx.Rngs):
    sizes = [in_features, *hidden]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
    self.activation = as_activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      h = self.activation(layer(h))
    return self.head(h)


class MnistCNN(nnx.Module):
  """Small MNIST CNN: conv5x5(16)-pool-conv5x5(32)-pool-fc64-fc10, NHWC 28x28x1."""

  def __init__(self, num_classes: int = 10, *, in_channels: int = 1, image_size: int = 28,
               activation="relu", conv_impl: str = "auto", rngs: nnx.Rngs):
    self.conv1 = Conv2D(in_channels, 16, 5, conv_impl=conv_impl, rngs=rngs)
    self.conv2 = Conv2D(16, 32, 5, conv_impl=conv_impl, rngs=rngs)
    s = image_size // 4
    self.fc1 = nnx.Linear(s * s * 32, 64, rngs=rngs)
    self.fc2 = nnx.Linear(64, num_classes, rngs=rngs)
    self.activation = as_activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.activation
    h = max_pool2(a(self.conv1(x)))
    h = max_pool2(a(self.conv2(h)))
    h = a(self.fc1(h.reshape(h.shape[0], -1)))
    return self.fc2(h)


class CifarLeNet(nnx.Module):
  """The CIFAR LeNet of the gradient-alignment paper (Joo et al., 2023).

  conv3x3(32)-conv3x3(32)-pool-conv3x3(64)-conv3x3(64)-pool-fc256-fc10, NHWC
  32x32x3, 'SAME' padding.
  """

  def __init__(self, num_classes: int = 10, *, in_channels: int = 3, image_size: int = 32,
               activation="relu", conv_impl: str = "auto", rngs: nnx.Rngs):
    self.conv1 = Conv2D(in_channels, 32, 3, conv_impl=conv_impl, rngs=rngs)
    self.conv2 = Conv2D(32, 32, 3, conv_impl=conv_impl, rngs=rngs)
    self.conv3 = Conv2D(32, 64, 3, conv_impl=conv_impl, rngs=rngs)
    self.conv4 = Conv2D(64, 64, 3, conv_impl=conv_impl, rngs=rngs)
    s = image_size // 4
    self.fc1 = nnx.Linear(s * s * 64, 256, rngs=rngs)
    self.fc2 = nnx.Linear(256, num_classes, rngs=rngs)
    self.activation = as_activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.activation
    h = a(self.conv2(a(self.conv1(x))))
    h = max_pool2(h)
    h = a(self.conv4(a(self.conv3(h))))
    h = max_pool2(h)
    h = a(self.fc1(h.reshape(h.shape[0], -1)))
    return self.fc2(h)


class BasicBlock(nnx.Module):
  """ResNet basic block with BatchNorm (two 3x3 convs and a shortcut)."""

  def __init__(self, cin: int, cout: int, stride: int, *, activation, conv_impl: str,
               rngs: nnx.Rngs):
    self.conv1 = Conv2D(cin, cout, 3, stride=stride, padding=((1, 1), (1, 1)),
                        use_bias=False, conv_impl=conv_impl, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.conv2 = Conv2D(cout, cout, 3, use_bias=False, conv_impl=conv_impl, rngs=rngs)
    self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    if stride != 1 or cin != cout:
      self.short_conv = Conv2D(cin, cout, 1, stride=stride, padding="VALID", use_bias=False,
                               conv_impl=conv_impl, rngs=rngs)
      self.short_bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    else:
      self.short_conv = None
      self.short_bn = None
    self.activation = as_activation(activation)

  def __call__(self, x):
    a = self.activation
    h = a(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    s = x if self.short_conv is None else self.short_bn(self.short_conv(x))
    return a(h + s)


class ResNet18(nnx.Module):
  """CIFAR ResNet-18 (3x3 stem, four stages of two basic blocks, BatchNorm).

  Call ``model.eval()`` (or use `as_fn`, which does) to run BatchNorm with its
  fixed running statistics; explanations require it, since batch statistics
  make examples interact.
  """

  def __init__(self, num_classes: int = 10, *, in_channels: int = 3, width: int = 64,
               activation="relu", conv_impl: str = "auto", rngs: nnx.Rngs):
    self.stem = Conv2D(in_channels, width, 3, use_bias=False, conv_impl=conv_impl, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
    blocks = []
    cin = width
    for i, mult in enumerate((1, 2, 4, 8)):
      cout = width * mult
      for j in range(2):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(BasicBlock(cin, cout, stride, activation=activation,
                                 conv_impl=conv_impl, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)
    self.activation = as_activation(activation)

  def __call__(self, x):
    h = self.activation(self.stem_bn(self.stem(x)))
    for block in self.blocks:
      h = block(h)
    return self.head(avg_pool_global(h))


MODELS = {"mlp": MLP, "cnn": MnistCNN, "lenet": CifarLeNet, "resnet18": ResNet18}


def create_model(name: str, *, input_shape: Sequence[int], num_classes: int,
                 activation="relu", seed: int = 0, **kwargs) -> nnx.Module:
  """Builds a zoo model by name for inputs of shape ``input_shape`` (no batch).

  Args:
    name: ``mlp``, ``cnn`` (MNIST CNN), ``lenet`` (CIFAR LeNet) or ``resnet18``.
    input_shape: e.g. ``(28, 28, 1)`` or ``(30,)``.
    num_classes: number of logits.
    activation: ``"relu"``, ``"softplus:BETA"`` or an `Activation`.
    seed: parameter initialisation seed.
    **kwargs: forwarded to the model constructor.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model `name` {name!r}; expected one of {sorted(MODELS)}.")
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
      num_classes < 1):
    raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
  try:
    input_shape = tuple(input_shape)
  except TypeError:
    raise ValueError(f"`input_shape` must be a tuple of positive ints; got {input_shape!r}.") from None
  if not input_shape or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                            for d in input_shape):
    raise ValueError(f"`input_shape` must be a non-empty tuple of positive ints (no batch "
                     f"axis); got {input_shape!r}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"`seed` must be a non-negative int; got {seed!r}.")
  try:
    activation = as_activation(activation)
  except (ValueError, TypeError) as e:
    raise ValueError(f"Bad `activation` {activation!r}: {e}") from None
  rngs = nnx.Rngs(seed)
  input_shape = tuple(int(d) for d in input_shape)
  if name == "mlp":
    return MLP(math.prod(input_shape), num_classes, activation=activation, rngs=rngs, **kwargs)
  if len(input_shape) != 3:
    raise ValueError(f"`input_shape` must be (H, W, C) for {name!r}; got {input_shape}.")
  h, w, c = input_shape
  if name == "resnet18":
    return ResNet18(num_classes, in_channels=c, activation=activation, rngs=rngs, **kwargs)
  if h != w or h % 4:
    raise ValueError(f"`input_shape` must be square with a side divisible by 4; got {input_shape}.")
  cls = MODELS[name]
  return cls(num_classes, in_channels=c, image_size=h, activation=activation, rngs=rngs, **kwargs)
