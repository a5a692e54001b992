"""PyTorch twins of the rattr_jax zoo models with exact weight copies.

Peer benchmarks (Captum, Quantus) must run the *same* network as rattr_jax.
`torch_from_flax(model)` builds the PyTorch equivalent of a
`rattr_jax.models.MLP`, `MnistCNN` or `CifarLeNet` and copies every weight
across, so both frameworks compute the same function up to float rounding.

Layouts:
  * Convolutional twins take **NCHW** input (PyTorch's native layout, so the
    peer is timed on its fast path). Use `to_torch_input` / `from_torch` to
    move NHWC arrays across; the first dense layer's weight is permuted so
    that PyTorch's (C, H, W) flatten order matches Flax's (H, W, C).
  * The MLP twin flattens its input exactly like the Flax MLP, so it takes the
    same array layout as the JAX model.

Example:
  >>> tm = torch_from_flax(model)                          # doctest: +SKIP
  >>> logits = tm(to_torch_input(tm, x_nhwc))              # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rattr_jax.models import Activation, CifarLeNet, MLP, MnistCNN


class TorchActivation(nn.Module):
  """The torch version of a `rattr_jax.models.Activation` (relu, softplus-beta, tanh, identity)."""

  def __init__(self, activation: Activation):
    super().__init__()
    self.name = activation.name
    self.beta = float(activation.beta)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    if self.name == "relu":
      return F.relu(z)
    if self.name == "softplus":
      # log(1 + exp(beta z)) / beta; torch switches to the identity above
      # beta z > 20, where the two differ by < 3e-9.
      return F.softplus(z, beta=self.beta)
    if self.name == "tanh":
      return torch.tanh(z)
    return z

  def extra_repr(self) -> str:
    return f"{self.name}, beta={self.beta}" if self.name == "softplus" else self.name


class TorchMLP(nn.Module):
  """Twin of `rattr_jax.models.MLP`: flatten, (Linear, act)*, Linear."""

  image_layout = None

  def __init__(self, sizes: list[int], num_classes: int, activation: Activation):
    super().__init__()
    self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nn.Linear(sizes[-1], num_classes)
    self.act = TorchActivation(activation)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      h = self.act(layer(h))
    return self.head(h)


class TorchMnistCNN(nn.Module):
  """Twin of `rattr_jax.models.MnistCNN` on NCHW input."""

  image_layout = "NCHW"

  def __init__(self, num_classes: int, in_channels: int, image_size: int,
               activation: Activation, widths=(16, 32, 64)):
    super().__init__()
    c1, c2, f1 = widths
    self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
    self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
    s = image_size // 4
    self.fc1 = nn.Linear(s * s * c2, f1)
    self.fc2 = nn.Linear(f1, num_classes)
    self.act = TorchActivation(activation)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    a = self.act
    h = F.max_pool2d(a(self.conv1(x)), 2)
    h = F.max_pool2d(a(self.conv2(h)), 2)
    h = a(self.fc1(h.flatten(1)))
    return self.fc2(h)


class TorchCifarLeNet(nn.Module):
  """Twin of `rattr_jax.models.CifarLeNet` on NCHW input."""

  image_layout = "NCHW"

  def __init__(self, num_classes: int, in_channels: int, image_size: int,
               activation: Activation, widths=(32, 32, 64, 64, 256)):
    super().__init__()
    c1, c2, c3, c4, f1 = widths
    self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
    self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
    self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
    self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
    s = image_size // 4
    self.fc1 = nn.Linear(s * s * c4, f1)
    self.fc2 = nn.Linear(f1, num_classes)
    self.act = TorchActivation(activation)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    a = self.act
    h = F.max_pool2d(a(self.conv2(a(self.conv1(x)))), 2)
    h = F.max_pool2d(a(self.conv4(a(self.conv3(h)))), 2)
    h = a(self.fc1(h.flatten(1)))
    return self.fc2(h)


def _np(param) -> np.ndarray:
  return np.array(param[...], dtype=np.float32)


def _copy_linear(dst: nn.Linear, src, *, hwc: tuple[int, int, int] | None = None) -> None:
  """Copies an ``nnx.Linear`` (kernel ``[in, out]``) into ``dst`` (weight ``[out, in]``).

  With ``hwc=(H, W, C)`` the input features are reordered from Flax's NHWC
  flatten order to PyTorch's NCHW flatten order.
  """
  k = _np(src.kernel)
  if hwc is not None:
    h, w, c = hwc
    k = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
  with torch.no_grad():
    dst.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
    dst.bias.copy_(torch.from_numpy(_np(src.bias)))


def _copy_conv(dst: nn.Conv2d, src) -> None:
  """Copies a `rattr_jax.models.Conv2D` (HWIO) into ``dst`` (OIHW)."""
  if tuple(src.stride) != (1, 1):
    raise ValueError("Only stride-1 convolutions are supported.")
  k = _np(src.kernel)
  with torch.no_grad():
    dst.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))))
    dst.bias.copy_(torch.from_numpy(_np(src.bias)))


def torch_from_flax(model) -> nn.Module:
  """Builds the PyTorch twin of a rattr_jax zoo model and copies its weights.

  Args:
    model: a `rattr_jax.models.MLP`, `MnistCNN` or `CifarLeNet` (any
      activation, any number of classes / input size).

  Returns:
    A float32 ``torch.nn.Module`` in eval mode computing the same logits. Its
    ``image_layout`` attribute is ``"NCHW"`` for the conv nets (feed it
    `to_torch_input(module, x_nhwc)`) and ``None`` for the MLP.

  Raises:
    ValueError: for other model classes.
  """
  act = model.activation
  if isinstance(model, MLP):
    layers = list(model.hidden)
    sizes = ([layers[0].in_features] + [l.out_features for l in layers] if layers
             else [model.head.in_features])
    tm = TorchMLP(sizes, model.head.out_features, act)
    for dst, src in zip(tm.hidden, layers):
      _copy_linear(dst, src)
    _copy_linear(tm.head, model.head)
  elif isinstance(model, (MnistCNN, CifarLeNet)):
    convs = (["conv1", "conv2"] if isinstance(model, MnistCNN)
             else ["conv1", "conv2", "conv3", "conv4"])
    in_channels = int(model.conv1.kernel.shape[2])
    c_last = int(getattr(model, convs[-1]).kernel.shape[3])
    s = int(round((model.fc1.in_features / c_last) ** 0.5))
    cls = TorchMnistCNN if isinstance(model, MnistCNN) else TorchCifarLeNet
    widths = [int(getattr(model, c).kernel.shape[3]) for c in convs] + [model.fc1.out_features]
    tm = cls(model.fc2.out_features, in_channels, 4 * s, act, widths)
    for name in convs:
      _copy_conv(getattr(tm, name), getattr(model, name))
    _copy_linear(tm.fc1, model.fc1, hwc=(s, s, c_last))
    _copy_linear(tm.fc2, model.fc2)
  else:
    raise ValueError(f"`model` must be an MLP, MnistCNN or CifarLeNet; got {type(model).__name__}.")
  return tm.float().eval()


def to_torch_input(module: nn.Module, x) -> torch.Tensor:
  """A JAX/numpy batch as a float32 tensor in ``module``'s layout (NHWC -> NCHW for conv nets)."""
  a = np.array(x, dtype=np.float32)
  if getattr(module, "image_layout", None) == "NCHW":
    a = a.transpose(0, 3, 1, 2)
  return torch.from_numpy(np.ascontiguousarray(a))


def from_torch(module: nn.Module, t: torch.Tensor) -> np.ndarray:
  """A tensor in ``module``'s input layout (e.g. an attribution) as a numpy array in JAX layout."""
  a = t.detach().cpu().numpy()
  if getattr(module, "image_layout", None) == "NCHW":
    a = a.transpose(0, 2, 3, 1)
  return np.ascontiguousarray(a)
