"""`jax.jit` for functions that take callables (``fn``, ``explain_fn``) as arguments.

A model function is often a pytree carrying its weights (`jax.tree_util.Partial`
from `rattr_jax.models.as_fn`, a NamedTuple of arrays, an Equinox module).
Marking it static would bake the weights into the program as constants and
require it to be hashable; passing it as a plain argument fails for Python
functions. `jit_with_callables` splits each callable argument into its array
leaves (traced, so new weights of the same shape reuse the compiled program
whenever the rest of the callable is equal)
and everything else (static: the tree structure and non-array leaves such as
plain Python functions, compared by identity/equality).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import jax
import numpy as np


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, jax.core.Tracer, np.ndarray, np.generic))


class _Static:
  """Hashable holder of a callable's static part (tree structure + non-array leaves).

  The comparison key and its hash are computed once: jit hashes and compares
  the static argument on every call, and for a model with many leaves that
  cost more than a small model's whole compiled program.
  """

  __slots__ = ("treedef", "leaves", "mask", "_k", "_h")

  def __init__(self, treedef, leaves, mask):
    self.treedef, self.leaves, self.mask = treedef, leaves, mask
    self._k = (treedef, mask, tuple(l if _hashable(l) else _ById(l) for l in leaves))
    self._h = hash(self._k)

  def __hash__(self):
    return self._h

  def __eq__(self, other):
    if self is other:
      return True
    return isinstance(other, _Static) and self._h == other._h and self._k == other._k


class _ById:
  """Identity-compared stand-in for an unhashable static leaf (kept alive)."""

  __slots__ = ("obj",)

  def __init__(self, obj):
    self.obj = obj

  def __hash__(self):
    return id(self.obj)

  def __eq__(self, other):
    return isinstance(other, _ById) and self.obj is other.obj


def _hashable(x) -> bool:
  try:
    hash(x)
    return True
  except TypeError:
    return False


def partition(obj):
  """Splits a pytree-or-callable into ``(array_leaves, static)``."""
  leaves, treedef = jax.tree_util.tree_flatten(obj)
  mask = tuple(_is_array(l) for l in leaves)
  dyn = [l for l, m in zip(leaves, mask) if m]
  stat = tuple(None if m else l for l, m in zip(leaves, mask))
  return dyn, _Static(treedef, stat, mask)


def combine(dyn, static: _Static):
  it = iter(dyn)
  leaves = [next(it) if m else s for s, m in zip(static.leaves, static.mask)]
  return jax.tree_util.tree_unflatten(static.treedef, leaves)


def jit_with_callables(fun: Callable | None = None, *, callables: Sequence[str] = ("fn",),
                       static_argnames: Sequence[str] = ()):
  """Like ``jax.jit(fun, static_argnames=...)``, with callable args split as above.

  Args:
    fun: the implementation.
    callables: names of the arguments holding callables/pytrees to split.
    static_argnames: names of other static (hashable) arguments.

  The returned function has ``clear_cache()`` and ``_cache_size()`` like a
  jitted function.
  """
  if fun is None:
    return functools.partial(jit_with_callables, callables=callables,
                             static_argnames=static_argnames)
  sig = inspect.signature(fun)
  callables = tuple(callables)
  static_names = tuple(static_argnames) + tuple(f"__static_{c}" for c in callables)

  def inner(*args, **kwargs):
    for c in callables:
      kwargs[c] = combine(kwargs.pop(f"__dyn_{c}"), kwargs.pop(f"__static_{c}"))
    return fun(*args, **kwargs)

  jitted = jax.jit(inner, static_argnames=static_names)

  names = tuple(sig.parameters)
  defaults = {n: p.default for n, p in sig.parameters.items()
              if p.default is not inspect.Parameter.empty}

  @functools.wraps(fun)
  def wrapper(*args, **kwargs):
    # `inspect.Signature.bind` costs ~20 us per call; these are private
    # implementations called with known arguments, so a plain merge suffices.
    if len(args) > len(names):
      raise TypeError(f"{fun.__name__}() takes {len(names)} arguments; got {len(args)}.")
    call_kwargs = dict(defaults)
    call_kwargs.update(zip(names, args))
    call_kwargs.update(kwargs)
    for c in callables:
      dyn, st = partition(call_kwargs.pop(c))
      call_kwargs[f"__dyn_{c}"] = dyn
      call_kwargs[f"__static_{c}"] = st
    return jitted(**call_kwargs)

  wrapper.clear_cache = jitted.clear_cache
  wrapper._cache_size = jitted._cache_size
  wrapper.jitted = jitted
  return wrapper
