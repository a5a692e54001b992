"""SENN relevance parametrizers ``theta(x) -> [B, k, T]``.

``T`` is the number of aggregator outputs (``C`` for softmax, 1 for sigmoid).
Dropout is explicit: it is applied only when a PRNG ``key`` is passed (training),
never from hidden state, so ``theta`` is a pure function of ``x`` at evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rattr_jax import _random
from rattr_jax.models import Conv2D, max_pool2

PARAMETRIZERS = ("mlp", "lenet", "vgg")


def dropout(x: jax.Array, rate: float, key: jax.Array | None, *,
            shape: Sequence[int] | None = None) -> jax.Array:
  """Inverted dropout with an explicit key; identity when ``key`` is None or ``rate == 0``.

  ``shape`` broadcasts the mask (e.g. ``[B, 1, 1, C]`` for channel dropout, the
  ``Dropout2d`` of the original LeNet parametrizer).
  """
  if key is None or rate == 0.0:
    return x
  keep = _random.bernoulli(key, 1.0 - rate, tuple(shape) if shape else x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _keys(key, n):
  return [None] * n if key is None else list(jax.random.split(key, n))


class MLPParametrizer(nnx.Module):
  """Tabular relevances: an MLP with tanh hidden layers and a *linear* output.

  As ``dfc_parametrizer`` in dmelis/SENN (COMPAS used hidden sizes (10, 10, 5)).
  Also accepts images (flattened).

  Attributes:
    num_concepts: ``k``.
    num_outputs: ``T``.
  """

  def __init__(self, in_features: int, num_concepts: int, num_outputs: int, *,
               hidden: Sequence[int] = (10, 10, 5), dropout: float = 0.0, rngs: nnx.Rngs):
    sizes = [int(in_features), *[int(h) for h in hidden]]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_concepts * num_outputs, rngs=rngs)
    self.num_concepts = int(num_concepts)
    self.num_outputs = int(num_outputs)
    self.dropout = float(dropout)

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    z = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      z = jnp.tanh(layer(z))
    z = dropout(z, self.dropout, key)
    return self.head(z).reshape(x.shape[0], self.num_concepts, self.num_outputs)


class LeNetParametrizer(nnx.Module):
  """MNIST relevances, the ``image_parametrizer`` of dmelis/SENN; outputs in [-1, 1].

  conv5x5(C->10, VALID) -> maxpool2 -> ReLU -> conv5x5(10->20, VALID) ->
  channel dropout -> maxpool2 -> ReLU -> FC(20*s*s -> k*T) -> dropout -> tanh.

  Attributes:
    num_concepts: ``k``.
    num_outputs: ``T``.
    dropout: rate of both dropouts (0.5 in the original; applied only with a key).
  """

  def __init__(self, num_concepts: int, num_outputs: int, *, in_channels: int = 1,
               image_size: int = 28, dropout: float = 0.0, conv_impl: str = "auto",
               rngs: nnx.Rngs):
    s = ((image_size - 4) // 2 - 4) // 2
    if s < 1 or (image_size - 4) % 2 or ((image_size - 4) // 2 - 4) % 2:
      raise ValueError("The LeNet parametrizer needs square images with a side >= 16 "
                       f"divisible by 4; got side {image_size}.")
    self.conv1 = Conv2D(in_channels, 10, 5, padding="VALID", conv_impl=conv_impl, rngs=rngs)
    self.conv2 = Conv2D(10, 20, 5, padding="VALID", conv_impl=conv_impl, rngs=rngs)
    self.fc = nnx.Linear(20 * s * s, num_concepts * num_outputs, rngs=rngs)
    self.num_concepts = int(num_concepts)
    self.num_outputs = int(num_outputs)
    self.dropout = float(dropout)

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    k1, k2 = _keys(key, 2)
    b = x.shape[0]
    p = jax.nn.relu(max_pool2(self.conv1(x)))
    p = self.conv2(p)
    p = dropout(p, self.dropout, k1, shape=(b, 1, 1, p.shape[-1]))
    p = jax.nn.relu(max_pool2(p))
    z = self.fc(p.reshape(b, -1))
    z = dropout(z, self.dropout, k2)
    return jnp.tanh(z).reshape(b, self.num_concepts, self.num_outputs)


class VGGParametrizer(nnx.Module):
  """CIFAR relevances: VGG-style conv blocks, an MLP head, outputs in [-1, 1].

  Each width is a conv3x3 (SAME) -> ReLU -> maxpool2 block; the defaults
  (64, 128, 256, 512, 512) and head (256, 128) follow the reproduction quoted in
  the notes ("CL(2^6..2^9, 2^9) -> FC(2^8, 2^7, k*C)"). The final layer is
  followed by dropout (with a key) and tanh, as in ``vgg_parametrizer``.

  Attributes:
    num_concepts: ``k``.
    num_outputs: ``T``.
  """

  def __init__(self, num_concepts: int, num_outputs: int, *, in_channels: int = 3,
               image_size: int = 32, widths: Sequence[int] = (64, 128, 256, 512, 512),
               hidden: Sequence[int] = (256, 128), dropout: float = 0.0,
               conv_impl: str = "auto", rngs: nnx.Rngs):
    side = int(image_size)
    convs, cin = [], in_channels
    for w in widths:
      if side < 2:
        raise ValueError(f"Too many VGG blocks ({len(widths)}) for image side {image_size}.")
      convs.append(Conv2D(cin, int(w), 3, conv_impl=conv_impl, rngs=rngs))
      cin, side = int(w), side // 2
    self.convs = nnx.List(convs)
    sizes = [cin * side * side, *[int(h) for h in hidden]]
    self.fcs = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_concepts * num_outputs, rngs=rngs)
    self.num_concepts = int(num_concepts)
    self.num_outputs = int(num_outputs)
    self.dropout = float(dropout)

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    b = x.shape[0]
    p = x
    for conv in self.convs:
      p = max_pool2(jax.nn.relu(conv(p)))
    z = p.reshape(b, -1)
    for fc in self.fcs:
      z = jax.nn.relu(fc(z))
    z = dropout(self.head(z), self.dropout, key)
    return jnp.tanh(z).reshape(b, self.num_concepts, self.num_outputs)
