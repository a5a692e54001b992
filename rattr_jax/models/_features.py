"""Hidden-layer features of any Flax NNX model, chosen by name.

Regularizers (activation sensitivity) and explanation methods (DANCE decoys)
need the output of an inner layer, ``F_l(x)``. Rather than asking every model
to return its features, this module reads them with Flax NNX's intermediate
capture: ``nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)``
records the output of every method call of every submodule, plus anything a
model stores with ``self.sow(nnx.Intermediate, name, value)``. No model needs
rewriting.

Layer names are dotted attribute paths of submodules, e.g. ``"conv1"``,
``"fc1"``, ``"blocks.0"``, ``"blocks.0.bn1"`` (the output of that submodule's
``__call__``). A method other than ``__call__`` is addressed as
``"path.method"`` (``"concepts"`` for a method of the model itself), and a
sown value as ``"path.sow_name"``.

Note that the zoo models apply their activation as a plain function, so
``"conv1"`` is the *pre-activation* output of the first convolution, while a
block such as ``"blocks.0"`` of `ResNet18` returns post-activation features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from rattr_jax.models import _functional


def _key_str(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flatten_intermediates(inter: Any) -> dict[str, tuple]:
  """Captured intermediates -> ``{dotted_name: tuple_of_values}``."""
  out: dict[str, tuple] = {}
  is_var = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
  for path, var in jax.tree_util.tree_flatten_with_path(inter, is_leaf=is_var)[0]:
    keys = [_key_str(k) for k in path]
    keys = [k for k in keys if k != "value"]
    if keys and keys[-1] == "__call__":
      keys = keys[:-1]
    name = ".".join(keys)
    if not name:  # the model's own __call__: the logits
      continue
    value = var.value if isinstance(var, nnx.Variable) else var
    out[name] = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  return out


def _module_names(model: nnx.Module) -> tuple[str, ...]:
  names = []
  for path, mod in nnx.iter_modules(model):
    if path and callable(mod):  # skips containers such as nnx.List
      names.append(".".join(str(p) for p in path))
  return tuple(names)


def _capture_all(graphdef, state, x):
  # Fresh Variable objects at the current trace level, so that a training-mode
  # BatchNorm may update its (discarded) statistics inside jax.grad / jax.vjp.
  m = nnx.merge(graphdef, jax.tree_util.tree_map(lambda a: a, state))
  out, inter = nnx.capture(m, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
  return out, _flatten_intermediates(inter)


def layer_names(model: nnx.Module, x: jax.Array | jax.ShapeDtypeStruct | None = None
                ) -> tuple[str, ...]:
  """Names accepted by `feature_fn` for ``model``.

  Args:
    model: any Flax NNX module.
    x: optional example batch ``[B, *F]`` (or a `jax.ShapeDtypeStruct`). Without
      it, the names are the submodule paths (found without running the model);
      with it, the model is traced abstractly (`jax.eval_shape`, no FLOPs) and
      the names of every captured method output and sown value are returned.

  Returns:
    Tuple of dotted layer names in call / definition order.
  """
  if x is None:
    return _module_names(model)
  graphdef, state = nnx.split(_functional.view(model))
  spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
  names: list[str] = []

  def record(s, z):
    names.extend(_capture_all(graphdef, s, z)[1].keys())
    return ()

  jax.eval_shape(record, state, spec)
  return tuple(names)


def _select(captured: dict[str, tuple], layers: tuple[str, ...], modules: tuple[str, ...]):
  feats = []
  for name in layers:
    if name not in captured:
      avail = sorted(set(captured) | set(modules))
      hint = (" (that submodule was not called in the forward pass)" if name in modules else "")
      raise ValueError(f"Unknown `layer` {name!r}{hint}; available layer names: {avail}.")
    values = captured[name]
    if len(values) != 1:
      raise ValueError(
          f"`layer` {name!r} was called {len(values)} times in one forward pass, so its "
          "output is ambiguous; sow the value you want with "
          "self.sow(nnx.Intermediate, name, value) and select that name.")
    feats.append(values[0])
  return tuple(feats)


def check_layers(model: nnx.Module, layer: str | Sequence[str], x: jax.Array) -> tuple[str, ...]:
  """Validates layer names against ``model`` on an example batch, before tracing.

  Raises:
    ValueError: a name is not among `layer_names(model, x)` (the message lists
      the available names), or ``layer`` is empty.
  """
  layers = _as_layers(layer)
  f = feature_fn(model, layers)
  jax.eval_shape(f, jax.ShapeDtypeStruct(x.shape, x.dtype))
  return layers


def _as_layers(layer) -> tuple[str, ...]:
  if isinstance(layer, str):
    layers = (layer,)
  else:
    try:
      layers = tuple(layer)
    except TypeError:
      raise ValueError(f"`layer` must be a name or a sequence of names; got {layer!r}.") from None
  if not layers:
    raise ValueError("`layer` must name at least one layer.")
  for name in layers:
    if not isinstance(name, str):
      raise ValueError(f"`layer` names must be strings; got {name!r}.")
  return layers


def call_with_features(model: nnx.Module, x: jax.Array, layer: str | Sequence[str]) -> tuple:
  """Calls ``model(x)`` in place and returns ``(logits, features)`` of hidden layers.

  Unlike `feature_fn`, the call runs on ``model`` in place, in its current
  mode: a training-mode BatchNorm updates ``model``'s statistics exactly as
  ``model(x)`` does. The training engine uses it for the clean pass, so a
  term that needs the clean hidden features (activation sensitivity) shares
  that forward pass and its backward pass.

  Args:
    model: any Flax NNX module mapping ``[B, *F]`` to logits.
    x: inputs ``[B, *F]``.
    layer: one layer name, or a sequence of names (see `layer_names`).

  Returns:
    ``(logits, features)``: features as in `feature_fn` (an array for one
    name, a tuple for a sequence).
  """
  single = isinstance(layer, str)
  layers = _as_layers(layer)
  logits, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
  feats = _select(_flatten_intermediates(inter), layers, _module_names(model))
  return logits, (feats[0] if single else feats)


def feature_fn(model: nnx.Module, layer: str | Sequence[str], *, train: bool = False,
               activation=None, conv_impl: str | None = None,
               with_logits: bool = False) -> Callable[[jax.Array], Any]:
  """Pure function ``f(x) -> features`` reading hidden layers of ``model`` by name.

  Like `rattr_jax.models.as_fn`, the result closes over the model's current
  weights (a `jax.tree_util.Partial`, so it is a pytree). Build it *inside* a
  traced loss from a model merged with traced parameters and parameter
  gradients flow through it.

  Args:
    model: any Flax NNX module mapping ``[B, *F]`` to logits.
    layer: one layer name, or a sequence of names (see `layer_names`).
    train: run in training mode (BatchNorm batch statistics; the statistics
      update is discarded). Default inference mode.
    activation: optional replacement activation on the same weights.
    conv_impl: optional convolution-implementation override (``"fast"`` or
      ``"lax"``; both have forward- and reverse-mode AD).
    with_logits: also return the logits: ``f(x) -> (features, logits)``.

  Returns:
    ``f(x)`` with ``x [B, *F]``, returning the layer output ``[B, ...]`` for a
    single name or a tuple of outputs for a sequence of names. An unknown name
    raises ``ValueError`` listing the available names when ``f`` is first
    called or traced (`check_layers` does it up front).
  """
  single = isinstance(layer, str)
  layers = _as_layers(layer)
  m = _functional.view(model, activation=activation, conv_impl=conv_impl, train=train)
  modules = _module_names(m)
  graphdef, state = nnx.split(m)
  return jax.tree_util.Partial(_FeatureApply(graphdef, layers, modules, single, with_logits),
                               state)


class _FeatureApply:
  """``(state, x) -> features`` for a fixed graph definition and layer selection.

  Compared and hashed by value, so the feature functions of two models of one
  architecture are the same static function and share compiled programs (only
  the weights, the `Partial`'s leaves, differ)."""

  __slots__ = ("graphdef", "layers", "modules", "single", "with_logits", "_h")

  def __init__(self, graphdef, layers, modules, single, with_logits):
    self.graphdef, self.layers, self.modules = graphdef, tuple(layers), tuple(modules)
    self.single, self.with_logits = bool(single), bool(with_logits)
    self._h = hash((graphdef, self.layers, self.modules, self.single, self.with_logits))

  def _key(self):
    return (self.graphdef, self.layers, self.modules, self.single, self.with_logits)

  def __call__(self, st, x):
    logits, captured = _capture_all(self.graphdef, st, x)
    feats = _select(captured, self.layers, self.modules)
    feats = feats[0] if self.single else feats
    return (feats, logits) if self.with_logits else feats

  def __hash__(self):
    return self._h

  def __eq__(self, other):
    return (isinstance(other, _FeatureApply) and self._h == other._h
            and self._key() == other._key())
