"""The explainer protocol: ``explainer(fn, x, target, *, key) -> attribution``.

An explainer maps a model function ``fn`` ([B, *F] -> logits [B, C]), inputs
``x [B, *F]`` and a target (an int or ``[B]``) to an attribution shaped like
``x``. ``key`` is always passed (keyword); deterministic explainers ignore it,
stochastic ones (SmoothGrad, VarGrad, DANCE) draw their noise from it and
raise ``ValueError`` when it is ``None``.

Every attribution method of `rattr_jax.attribution` is an explainer;
`rattr_jax.explainers.get` binds settings into a hashable explainer, and
`Precomputed` turns saved maps into one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from rattr_jax import _validation as V


@runtime_checkable
class Explainer(Protocol):
  """``explainer(fn, x, target, *, key) -> attribution`` shaped like ``x``."""

  def __call__(self, fn: Callable, x: jax.Array, target: Any, *,
               key: jax.Array | None) -> jax.Array: ...


def _is_leaf_array(v) -> bool:
  return isinstance(v, (jax.Array, np.ndarray, jax.core.Tracer))


def _is_array(v) -> bool:
  """A setting that is (or holds) arrays: a pytree child of `BoundExplainer`."""
  return any(_is_leaf_array(l) for l in jax.tree_util.tree_leaves(v))


@jax.tree_util.register_pytree_node_class
class BoundExplainer:
  """An attribution method with its settings bound: ``explainer(fn, x, target, *, key)``.

  Hashable and comparable by ``(name, settings)`` when every setting is
  hashable; array-valued settings (e.g. a baseline) are pytree leaves, so a
  new array of the same shape reuses compiled programs. Build it with
  `rattr_jax.explainers.get`.
  """

  __slots__ = ("name", "method", "settings", "_static", "_h")

  def __init__(self, name: str, method: Callable, settings: dict[str, Any]):
    self.name, self.method = name, method
    self.settings = dict(settings)
    self._static = tuple(sorted((k, v) for k, v in self.settings.items() if not _is_array(v)))
    self._h = None

  def __call__(self, fn, x, target, *, key=None):
    return self.method(fn, x, target, key=key, **self.settings)

  def __repr__(self):
    s = ", ".join(f"{k}={v!r}" for k, v in sorted(self.settings.items()))
    return f"explainers.get({self.name!r}{', ' if s else ''}{s})"

  def _key(self):
    arrays = tuple(sorted(k for k, v in self.settings.items() if _is_array(v)))
    return (self.name, self.method, self._static, arrays)

  def __hash__(self):
    if self._h is None:
      if any(_is_array(v) for v in self.settings.values()):
        raise TypeError("a BoundExplainer with array settings is not hashable; it is a "
                        "pytree (pass it through jax.jit as an argument).")
      self._h = hash(self._key())
    return self._h

  def __eq__(self, other):
    if not isinstance(other, BoundExplainer) or self._key() != other._key():
      return False
    for k, v in self.settings.items():
      if _is_array(v) and v is not other.settings[k]:
        return False
    return True

  def tree_flatten(self):
    names = tuple(sorted(k for k, v in self.settings.items() if _is_array(v)))
    return tuple(self.settings[k] for k in names), (self.name, self.method, self._static, names)

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    name, method, static, names = aux
    return cls(name, method, {**dict(static), **dict(zip(names, leaves))})


@jax.tree_util.register_pytree_node_class
class Precomputed:
  """A fixed attribution as an explainer: returns ``maps`` whatever ``fn``, ``x`` or ``key``.

  Use it to score saved maps with a metric that evaluates the explanation at
  ``x`` only (`rattr_jax.metrics.infidelity`, `faithfulness_estimate`,
  `insertion`, `deletion`, `adversarial_insertion`): the maps must have the
  shape of ``x``; calling it on inputs of another shape raises
  ``ValueError``. It does not recompute anything when ``x`` changes, so
  metrics and attacks that explain *perturbed* inputs (sensitivities,
  Lipschitz, stabilities, random-perturbation similarity, attacks) reject it
  with a ``ValueError``: a constant explanation would score as perfectly
  stable. ``maps`` is a pytree leaf (traced under jit).
  """

  __slots__ = ("maps",)

  def __init__(self, maps):
    self.maps = maps

  def __call__(self, fn, x, target, *, key=None):
    if tuple(x.shape) != tuple(self.maps.shape):
      raise ValueError(f"a precomputed explainer holds maps of shape {tuple(self.maps.shape)}; "
                       f"it cannot explain x of shape {tuple(x.shape)} (it returns its maps "
                       "for exactly the inputs they were computed on).")
    return self.maps.astype(x.dtype) if self.maps.dtype != x.dtype else self.maps

  def tree_flatten(self):
    return (self.maps,), None

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    return cls(leaves[0])


def precomputed(maps: Any) -> Precomputed:
  """Saved attributions ``[B, *F]`` as an explainer (see `Precomputed`)."""
  m = V.check_batch(maps, name="maps", min_rank=1)
  return Precomputed(m if isinstance(m, jax.Array) else jax.numpy.asarray(m))


def is_precomputed(explainer: Any) -> bool:
  return isinstance(explainer, Precomputed)


def check_explainer(explainer: Any, fn: Callable, x: jax.Array, t: jax.Array, key: Any = None,
                    *, name: str = "explainer", allow_precomputed: bool = True,
                    what: str = "") -> None:
  """``explainer`` must be callable and return an attribution shaped like ``x`` (abstractly).

  Raises:
    ValueError: not callable, a `Precomputed` where perturbed inputs are
      explained (``allow_precomputed=False``; ``what`` names the function), a
      failing call, or an output of the wrong shape.
  """
  if not callable(explainer):
    raise ValueError(f"`{name}` must be an explainer explainer(fn, x, target, *, key) -> "
                     f"attribution (e.g. rattr_jax.explainers.get('gradient')); got "
                     f"{type(explainer).__name__}. Saved maps: rattr_jax.explainers.precomputed(maps).")
  if isinstance(explainer, Precomputed):
    if not allow_precomputed:
      raise ValueError(f"`{name}` is a precomputed explainer, but {what or 'this function'} "
                       "explains perturbed inputs; pass an explainer that recomputes the "
                       "attribution (e.g. rattr_jax.explainers.get('gradient')).")
    if tuple(explainer.maps.shape) != tuple(x.shape):
      raise ValueError(f"`{name}` (precomputed maps) must have the shape of x {tuple(x.shape)}; "
                       f"got {tuple(explainer.maps.shape)}.")
    return
  probe = jax.tree_util.Partial(_call, explainer, fn)
  try:
    out = V.eval_shape(probe, x, t, key) if key is not None else V.eval_shape(
        jax.tree_util.Partial(_call_nokey, explainer, fn), x, t)
  except ValueError as e:
    raise ValueError(f"`{name}` failed on x of shape {tuple(x.shape)}: {e}") from e
  except Exception as e:
    raise ValueError(f"`{name}` failed on x of shape {tuple(x.shape)}: "
                     f"{type(e).__name__}: {e}") from e
  if getattr(out, "shape", None) != tuple(x.shape):
    raise ValueError(f"`{name}` must return an attribution shaped like x {tuple(x.shape)}; got "
                     f"{getattr(out, 'shape', type(out))}.")


def _call(explainer, fn, x, t, key):
  return explainer(fn, x, t, key=key)


def _call_nokey(explainer, fn, x, t):
  return explainer(fn, x, t, key=None)
