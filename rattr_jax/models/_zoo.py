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


def check_widths(widths, n: int, what: str) -> tuple[int, ...]:
  """``widths`` as a tuple of ``n`` positive ints, or a one-line ValueError."""
  try:
    out = tuple(widths)
  except TypeError:
    out = None
  if (out is None or len(out) != n or not all(
      isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w > 0 for w in out)):
    raise ValueError(f"`widths` must be {n} positive integers ({what}); got {widths!r}.")
  return tuple(int(w) for w in out)


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
  """Small MNIST CNN: conv5x5(16)-pool-conv5x5(32)-pool-fc64-fc10, NHWC 28x28x1.

  ``widths=(conv1, conv2, fc1)`` sets the layer widths (default ``(16, 32, 64)``).
  """

  DEFAULT_WIDTHS = (16, 32, 64)
  DECOY_LAYER = "conv2"  # DANCE's default layer (`rattr_jax.attribution.decoy_default_layer`)

  def __init__(self, num_classes: int = 10, *, in_channels: int = 1, image_size: int = 28,
               widths: Sequence[int] = DEFAULT_WIDTHS, activation="relu",
               conv_impl: str = "auto", rngs: nnx.Rngs):
    c1, c2, f1 = check_widths(widths, 3, "conv1, conv2, fc1")
    self.conv1 = Conv2D(in_channels, c1, 5, conv_impl=conv_impl, rngs=rngs)
    self.conv2 = Conv2D(c1, c2, 5, conv_impl=conv_impl, rngs=rngs)
    s = image_size // 4
    self.fc1 = nnx.Linear(s * s * c2, f1, rngs=rngs)
    self.fc2 = nnx.Linear(f1, num_classes, rngs=rngs)
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
  32x32x3, 'SAME' padding. ``widths=(conv1, conv2, conv3, conv4, fc1)`` sets
  the layer widths (default ``(32, 32, 64, 64, 256)``).
  """

  DEFAULT_WIDTHS = (32, 32, 64, 64, 256)
  DECOY_LAYER = "conv2"  # DANCE's default layer (`rattr_jax.attribution.decoy_default_layer`)

  def __init__(self, num_classes: int = 10, *, in_channels: int = 3, image_size: int = 32,
               widths: Sequence[int] = DEFAULT_WIDTHS, activation="relu",
               conv_impl: str = "auto", rngs: nnx.Rngs):
    c1, c2, c3, c4, f1 = check_widths(widths, 5, "conv1, conv2, conv3, conv4, fc1")
    self.conv1 = Conv2D(in_channels, c1, 3, conv_impl=conv_impl, rngs=rngs)
    self.conv2 = Conv2D(c1, c2, 3, conv_impl=conv_impl, rngs=rngs)
    self.conv3 = Conv2D(c2, c3, 3, conv_impl=conv_impl, rngs=rngs)
    self.conv4 = Conv2D(c3, c4, 3, conv_impl=conv_impl, rngs=rngs)
    s = image_size // 4
    self.fc1 = nnx.Linear(s * s * c4, f1, rngs=rngs)
    self.fc2 = nnx.Linear(f1, num_classes, rngs=rngs)
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

  DECOY_LAYER = "blocks.1"  # DANCE's default layer: the first stage's output

  def __init__(self, num_classes: int = 10, *, in_channels: int = 3, width: int = 64,
               widths: Sequence[int] | None = None, activation="relu",
               conv_impl: str = "auto", rngs: nnx.Rngs):
    # widths: the four stages' widths (default (width, 2 width, 4 width, 8 width)).
    stages = check_widths((width, 2 * width, 4 * width, 8 * width) if widths is None else widths,
                          4, "the four stages")
    self.stem = Conv2D(in_channels, stages[0], 3, use_bias=False, conv_impl=conv_impl, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(stages[0], momentum=0.9, rngs=rngs)
    blocks = []
    cin = stages[0]
    for i, cout in enumerate(stages):
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


#: What ``create_model(..., widths=...)`` sets for each zoo model, and its default.
WIDTHS = {"mlp": ("hidden layers (any number)", (128, 128)),
          "cnn": ("conv1, conv2, fc1", MnistCNN.DEFAULT_WIDTHS),
          "lenet": ("conv1, conv2, conv3, conv4, fc1", CifarLeNet.DEFAULT_WIDTHS),
          "resnet18": ("the four stages", (64, 128, 256, 512))}


def create_model(name: str, *, input_shape: Sequence[int], num_classes: int,
                 activation="relu", seed: int = 0, widths: Sequence[int] | None = None,
                 **kwargs) -> nnx.Module:
  """Builds a zoo model by name for inputs of shape ``input_shape`` (no batch).

  Args:
    name: ``mlp``, ``cnn`` (MNIST CNN), ``lenet`` (CIFAR LeNet) or ``resnet18``.
    input_shape: e.g. ``(28, 28, 1)`` or ``(30,)``.
    num_classes: number of logits.
    activation: ``"relu"``, ``"softplus:BETA"`` or an `Activation`.
    seed: parameter initialisation seed.
    widths: layer widths (``None``: the paper's). ``mlp``: the hidden sizes
      (any number); ``cnn``: ``(conv1, conv2, fc1)``, default ``(16, 32, 64)``;
      ``lenet``: ``(conv1, conv2, conv3, conv4, fc1)``, default
      ``(32, 32, 64, 64, 256)``; ``resnet18``: the four stages, default
      ``(64, 128, 256, 512)``. See `WIDTHS`.
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
  if widths is not None:
    if name == "mlp":
      try:
        n = len(widths)
      except TypeError:
        n = 0
      kwargs["hidden"] = check_widths(widths, max(n, 1), WIDTHS[name][0])
    else:
      kwargs["widths"] = check_widths(widths, len(WIDTHS[name][1]), WIDTHS[name][0])
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
