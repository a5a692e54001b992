"""The one documented way to turn a Flax NNX model into a pure ``fn(x) -> logits``.

* `as_fn(model)` returns ``fn(x)``: a pure function of the input, closing over
  the model's current weights, in inference mode (BatchNorm uses its running
  statistics, dropout is off).
* `surrogate_fn(model, beta=...)` returns the same network with every
  activation replaced by softplus-beta, *on the same weights*. Explanation
  attacks on ReLU networks take the gradient of their objective through it,
  since a ReLU network's saliency map is piecewise constant in ``x``.
* `view(model, train=...)` returns a copy sharing the weights, in inference or
  training mode, optionally with another activation or convolution.
* `functional(model)` returns ``(apply, state)`` with ``apply(state, x)``, for
  code that must pass the weights as arguments (training, parameter
  derivatives, sharding).

A model of your own plugs in by storing its nonlinearity as an attribute named
``activation`` holding a `rattr_jax.models.Activation` and calling it; its
convolutions may use `rattr_jax.models.Conv2D` to get the fast CPU path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from rattr_jax.models._activation import Activation, as_activation
from rattr_jax.models import _conv


def view(model: nnx.Module, *, train: bool = False, activation=None,
         conv_impl: str | None = None) -> nnx.Module:
  """A copy of ``model`` sharing its weights, in inference or training mode.

  The model itself is not changed (its mode, activation and convolution
  implementation stay as they are); the copy holds the same parameter arrays.

  Args:
    model: an NNX module.
    train: ``True`` for training mode (BatchNorm batch statistics, dropout on),
      ``False`` (default) for inference mode.
    activation: optional replacement for every ``activation`` attribute (e.g.
      ``Activation.softplus(10)`` or ``"softplus"``).
    conv_impl: optional convolution implementation for every
      `rattr_jax.models.Conv2D` (one of `rattr_jax.models.CONV_IMPLS`, or
      ``"auto"``).

  Returns:
    The copy (an ``nnx.Module`` of the same class).
  """
  graphdef, state = nnx.split(model)
  m = nnx.merge(graphdef, state)
  if train:
    m.train()
  else:
    m.eval()
  attrs: dict[str, Any] = {}
  if activation is not None:
    attrs["activation"] = as_activation(activation)
  if conv_impl is not None:
    attrs["conv_impl"] = _conv.resolve_impl(conv_impl) if conv_impl != "auto" else "auto"
  if attrs:
    for _, mod in nnx.iter_modules(m):
      for k, v in attrs.items():
        if hasattr(mod, k):
          setattr(mod, k, v)
  return m


def functional(model: nnx.Module, *, activation=None, conv_impl: str | None = None,
               train: bool = False) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
  """Splits ``model`` into ``apply(state, x) -> logits`` and its ``state``.

  Args:
    model: an NNX module mapping ``[B, *F]`` to ``[B, C]``.
    activation: optional replacement activation (e.g. ``Activation.softplus(10)``).
    conv_impl: optional convolution implementation override (``"fast"``,
      ``"lax"``; both have forward- and reverse-mode AD).
    train: ``True`` for training mode (BatchNorm batch statistics). In train
      mode ``apply`` returns ``(logits, new_state)`` so statistics updates are
      explicit; in inference mode it returns logits only.
  """
  m = view(model, activation=activation, conv_impl=conv_impl, train=train)
  graphdef, state = nnx.split(m)

  if train:
    return functools.partial(_apply_train, graphdef), state
  return functools.partial(_apply, graphdef), state


def _apply(graphdef, state, x):
  return nnx.merge(graphdef, state)(x)


def _apply_train(graphdef, state, x):
  m = nnx.merge(graphdef, state, copy=True)  # never mutate the caller's state
  out = m(x)
  return out, nnx.state(m)


def as_fn(model: nnx.Module, *, activation=None,
          conv_impl: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """Pure inference function ``fn(x) -> logits`` of ``model``'s current weights.

  Args:
    model: an NNX module mapping ``[B, *F]`` to ``[B, C]``.
    activation: optional replacement activation on the same weights.
    conv_impl: optional convolution-implementation override.

  Returns:
    A function of the input only, usable with every rattr_jax method. Later
    changes to ``model`` do not affect it.

  Example:
    >>> fn = as_fn(model)                       # doctest: +SKIP
    >>> sal = gradient(fn, x, target=3)         # doctest: +SKIP
  """
  m = view(model, activation=activation, conv_impl=conv_impl)
  graphdef, state = nnx.split(m)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  # The weights as a flat list (a native pytree: flattening it on every call
  # costs ~1 us, against ~10 us for an `nnx.State`), and everything else in a
  # value-compared static callable: models of the same structure share one
  # compiled program.
  return jax.tree_util.Partial(_LeafApply(graphdef, treedef), leaves)


class _LeafApply:
  """``(leaves, x) -> logits`` for a fixed graph definition and state structure."""

  __slots__ = ("graphdef", "treedef", "_h")

  def __init__(self, graphdef, treedef):
    self.graphdef, self.treedef = graphdef, treedef
    self._h = hash((graphdef, treedef))

  def __call__(self, leaves, x):
    return _apply(self.graphdef, jax.tree_util.tree_unflatten(self.treedef, leaves), x)

  def __hash__(self):
    return self._h

  def __eq__(self, other):
    return (isinstance(other, _LeafApply) and self._h == other._h
            and self.graphdef == other.graphdef and self.treedef == other.treedef)


def surrogate_fn(model: nnx.Module, *, beta: float = 10.0,
                 conv_impl: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """The softplus-beta surrogate of ``model`` on the same weights.

  Every ``activation`` attribute is replaced by ``softplus_beta(z) =
  log(1 + exp(beta z)) / beta``. A large ``beta`` (about 10) keeps the
  surrogate's predictions close to the ReLU model's; ``beta = 1`` (Ghorbani's
  SqueezeNet value) was measured to agree with a ReLU MNIST CNN on only 37%
  of images.
  """
  return as_fn(model, activation=Activation.softplus(beta), conv_impl=conv_impl)
