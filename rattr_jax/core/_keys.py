"""Per-example and per-call PRNG keys.

* `example_keys`: one key (split into ``B``) or ``B`` keys (as given), so that
  example ``b``'s randomness does not depend on the rest of the batch.
* `call_key`: the key an explainer gets for call number ``i`` of a function,
  derived deterministically from the function's own ``key`` (``fold_in``):
  explainers are always called with ``key=``; deterministic ones ignore it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rattr_jax import _validation as V


def as_typed_key(key: jax.Array) -> jax.Array:
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  return key


def example_keys(key: jax.Array, batch: int) -> jax.Array:
  """``[B]`` typed keys from one key (split) or ``B`` keys (as given)."""
  key = as_typed_key(key)
  return jax.random.split(key, batch) if key.ndim == 0 else key


#: Salt of the explainer key stream (keeps it apart from a function's own noise).
_EXPLAINER_STREAM = 0x6578706C  # "expl"


def call_key(key: jax.Array | None, i: Any) -> jax.Array | None:
  """The explainer key of call ``i``: ``fold_in(fold_in(key, salt), i)``.

  A batch of keys ``[B]`` uses its first key. ``None`` stays ``None`` (a
  function that draws no random numbers itself; a stochastic explainer then
  raises for the missing key).
  """
  if key is None:
    return None
  key = as_typed_key(key)
  if key.ndim:
    key = key.reshape(-1)[0]
  return jax.random.fold_in(jax.random.fold_in(key, _EXPLAINER_STREAM), i)


def check_key_or_keys(key: Any, batch: int, *, name: str = "key") -> jax.Array:
  """Accepts one PRNG key or ``B`` keys (typed ``[B]`` or raw ``[B, 2]``)."""
  key = V.check_key(key, name=name)
  key = as_typed_key(key)
  if key.shape not in ((), (batch,)):
    raise ValueError(f"`{name}` must be one PRNG key or a batch of B = {batch} keys; got "
                     f"key shape {tuple(key.shape)}.")
  return key


def check_optional_key(key: Any, *, name: str = "key") -> jax.Array | None:
  return None if key is None else V.check_key(key, name=name)
