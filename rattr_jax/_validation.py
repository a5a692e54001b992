"""Argument checks that run before tracing.

Every public function in rattr_jax validates its arguments with these helpers
*outside* of `jax.jit`, so bad input produces a `ValueError` that names the
offending argument instead of a shape error deep inside XLA.

Checks that need concrete values (NaN/inf in ``x``, target range) are only
performed when the value is concrete. Under an outer `jax.jit` the value is a
tracer; then shape checks still run but value checks are skipped (documented
behaviour: NaN inputs propagate to NaN attributions under jit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax import _jit


def _spec(a: Any) -> tuple:
  """Hashable ``(shape, dtype, weak_type)`` of an array or a Python scalar."""
  if isinstance(a, (jax.Array, np.ndarray)) and not isinstance(a, jax.core.Tracer):
    return (a.shape, a.dtype, bool(getattr(a, "weak_type", False)))
  aval = jax.typeof(a)
  return (aval.shape, aval.dtype, bool(getattr(aval, "weak_type", False)))


def _to_struct(spec: tuple) -> jax.ShapeDtypeStruct:
  shape, dtype, weak = spec
  return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)


@functools.lru_cache(maxsize=128)
def _cached_eval_shape(static, leaf_specs, arg_specs):
  run = lambda leaves, *args: _jit.combine(leaves, static)(*args)
  return jax.eval_shape(run, [_to_struct(s) for s in leaf_specs],
                        *[_to_struct(s) for s in arg_specs])


def eval_shape(f: Callable, *args: Any) -> Any:
  """``jax.eval_shape(f, *args)`` memoised on what the output shapes depend on.

  The key is ``f``'s static structure (for a pytree callable such as
  `rattr_jax.models.as_fn`: its tree structure and non-array leaves), the
  shapes and dtypes of its array leaves, and those of ``args``. Validation
  runs on every public call, so without the cache abstract evaluation (a full
  trace of the model) dominates the cost of small calls; the key is built from
  plain ``(shape, dtype)`` tuples because it is computed on every call too.
  """
  dyn, static = _jit.partition(f)
  try:
    hash(static)
  except TypeError:
    return jax.eval_shape(f, *(_to_struct(_spec(a)) for a in args))
  return _cached_eval_shape(static, tuple(_spec(l) for l in dyn),
                            tuple(_spec(a) for a in args))


def is_concrete(value: Any) -> bool:
  """True when ``value`` is not a tracer (its data can be inspected)."""
  return not isinstance(value, jax.core.Tracer)


def check_batch(x: Any, *, name: str = "x", min_rank: int = 2,
                max_rank: int | None = None) -> jax.Array:
  """Checks that ``x`` is a floating batch ``[B, *F]`` and finite if concrete."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  ndim = len(x.shape)
  if ndim < min_rank or (max_rank is not None and ndim > max_rank):
    want = f"{min_rank}" if max_rank == min_rank else (
        f">= {min_rank}" if max_rank is None else f"{min_rank}..{max_rank}")
    raise ValueError(
        f"`{name}` must be a batch of rank {want} ([B, *features]); got shape "
        f"{tuple(x.shape)}.")
  if x.shape[0] == 0:
    raise ValueError(f"`{name}` has an empty batch dimension.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"`{name}` must have a floating dtype; got {x.dtype}.")
  if is_concrete(x):
    arr = np.asarray(x)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"`{name}` contains NaN or inf values.")
  return x


def check_image_batch(x: Any, *, name: str = "x") -> jax.Array:
  """Checks that ``x`` is an NHWC batch ``[B, H, W, C]``."""
  return check_batch(x, name=name, min_rank=4, max_rank=4)


def num_classes_of(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                   *, name: str = "fn") -> int:
  """Returns ``C`` for logits ``fn(x) -> [B, C]`` using abstract evaluation."""
  try:
    out = eval_shape(fn, x)
  except Exception as e:  # pragma: no cover - message forwarding
    raise ValueError(f"`{name}` failed on an input of shape {tuple(x.shape)}: {e}") from e
  if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x.shape[0]:
    raise ValueError(
        f"`{name}` must map a batch [B, ...] to logits [B, C]; for x of shape "
        f"{tuple(x.shape)} it returned {getattr(out, 'shape', type(out))}.")
  return int(out.shape[1])


def check_target(target: Any, batch_size: int, num_classes: int | None,
                 *, name: str = "target") -> jax.Array:
  """Returns ``target`` as an int32 array ``[B]``; checks length and range.

  Concrete targets are checked and converted on the host: the result is a
  NumPy array (or the caller's int32 `jax.Array`), because an eager JAX op
  per call would cost more than a small model's whole attribution. Traced
  targets stay traced (only their shape and dtype are checked).
  """
  if isinstance(target, (bool, np.bool_)):
    raise ValueError(f"`{name}` must be an int or an int array; got a bool.")
  traced = not is_concrete(target)
  t = target if (traced or isinstance(target, jax.Array)) else np.asarray(target)
  if not np.issubdtype(t.dtype, np.integer):
    raise ValueError(f"`{name}` must be an int or an int array; got dtype {t.dtype}.")
  if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] != batch_size):
    raise ValueError(
        f"`{name}` must be an int or have shape [B] = [{batch_size}]; got shape "
        f"{tuple(t.shape)}.")
  if traced:
    t = t.astype(jnp.int32)
    return jnp.broadcast_to(t, (batch_size,)) if t.ndim == 0 else t
  tn = np.asarray(t)
  if num_classes is not None and tn.size and (tn.min() < 0 or tn.max() >= num_classes):
    raise ValueError(
        f"`{name}` must lie in [0, {num_classes}); got values in "
        f"[{tn.min()}, {tn.max()}].")
  if tn.ndim == 0:
    return np.full((batch_size,), tn, np.int32)
  if isinstance(t, jax.Array) and t.dtype == jnp.int32:
    return t  # already on device, nothing to convert
  return tn.astype(np.int32)


def check_positive_int(value: Any, *, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
  if value <= 0:
    raise ValueError(f"`{name}` must be a positive int; got {value}.")
  return int(value)


def check_optional_positive_int(value: Any, *, name: str) -> int | None:
  return None if value is None else check_positive_int(value, name=name)


def check_nonnegative(value: Any, *, name: str) -> Any:
  """Checks ``value >= 0`` when concrete (scalars or arrays)."""
  if is_concrete(value):
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if np.any(arr < 0):
      raise ValueError(f"`{name}` must be non-negative; got {value!r}.")
  return value


def check_positive(value: Any, *, name: str) -> Any:
  """Checks ``value > 0`` when concrete."""
  if is_concrete(value):
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if np.any(arr <= 0):
      raise ValueError(f"`{name}` must be positive; got {value!r}.")
  return value


def check_choice(value: Any, choices: Sequence[str], *, name: str) -> str:
  if value not in choices:
    raise ValueError(f"Unknown `{name}` {value!r}; expected one of {sorted(choices)}.")
  return value


def check_same_shape(a: Any, b: Any, *, names: tuple[str, str] = ("a", "b")) -> None:
  sa, sb = tuple(jnp.shape(a)), tuple(jnp.shape(b))
  if sa != sb:
    raise ValueError(
        f"`{names[0]}` and `{names[1]}` must have the same shape; got {sa} and {sb}.")


def check_baseline(baseline: Any, x: jax.Array, *, name: str = "baseline") -> jax.Array:
  """Broadcasts a scalar / per-example / full baseline to ``x``'s shape."""
  return jnp.broadcast_to(check_baseline_shape(baseline, x, name=name), x.shape)


def check_baseline_shape(baseline: Any, x: jax.Array, *, name: str = "baseline") -> Any:
  """Validates a baseline (shape and finiteness) without broadcasting it.

  Returns ``baseline`` as a scalar (``None`` -> ``0``), ``[*F]`` or
  ``[B, *F]`` array of ``x``'s dtype, to be broadcast inside a compiled
  function (saves an eager ``zeros_like``/``broadcast_to`` per call);
  `check_baseline` broadcasts it eagerly.
  """
  if baseline is None:
    return np.zeros((), x.dtype)
  b = baseline if isinstance(baseline, jax.Array) else np.asarray(baseline, dtype=x.dtype)
  if b.ndim != 0 and b.shape != x.shape[1:] and b.shape != tuple(x.shape):
    raise ValueError(
        f"`{name}` must be a scalar or have shape {tuple(x.shape[1:])} or "
        f"{tuple(x.shape)}; got {tuple(b.shape)}.")
  if is_concrete(b) and not np.all(np.isfinite(np.asarray(b))):
    raise ValueError(f"`{name}` contains NaN or inf values.")
  return b.astype(x.dtype) if b.dtype != x.dtype else b


def check_key(key: Any, *, name: str = "key") -> jax.Array:
  if key is None:
    raise ValueError(f"`{name}` is required: pass a PRNG key, e.g. jax.random.key(0).")
  if not hasattr(key, "dtype"):
    raise ValueError(f"`{name}` must be a JAX PRNG key; got {type(key).__name__}.")
  if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or
          (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))):
    raise ValueError(f"`{name}` must be a JAX PRNG key; got dtype {key.dtype}.")
  return key
