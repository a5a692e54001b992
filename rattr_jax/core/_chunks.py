"""Chunking: bounded memory by evaluating a batch or a set of samples in pieces.

The knob is always called ``chunk_size`` in the public API (``batch_size`` is
reserved for data batches). Chunks run one after another inside one compiled
program (`lax.map`), so memory is bounded by one chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def chunk_examples(f: Callable, args: Any, chunk_size: int | None) -> Any:
  """Applies ``f`` (batch -> pytree with batch-first leaves) in chunks of ``chunk_size`` examples.

  The last chunk is padded with copies of the last example, whose results are
  dropped. Examples never interact, so the result equals the unchunked one
  (up to stochastic explainers, whose noise is drawn per chunk).
  """
  leaves = jax.tree_util.tree_leaves(args)
  bsz = leaves[0].shape[0]
  if chunk_size is None or chunk_size >= bsz:
    return f(args)
  n = math.ceil(bsz / chunk_size)
  pad = n * chunk_size - bsz

  def split(a):
    if pad:
      a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
    return a.reshape((n, chunk_size) + a.shape[1:])

  out = jax.lax.map(f, jax.tree_util.tree_map(split, args))
  return jax.tree_util.tree_map(lambda o: o.reshape((n * chunk_size,) + o.shape[2:])[:bsz], out)


def chunk_indices(f: Callable[[jax.Array], Any], n: int, chunk_size: int | None) -> Any:
  """``f(idx [c]) -> pytree [c, ...]`` over ``idx = 0..n-1`` in chunks of ``chunk_size``.

  Returns the pytree with leading axis ``n``. One chunk is evaluated directly;
  several run inside one `lax.map` (the last chunk is padded with extra
  indices whose results are dropped).
  """
  bs = n if chunk_size is None else min(chunk_size, n)
  num_chunks = -(-n // bs)
  idx = jnp.arange(num_chunks * bs, dtype=jnp.int32).reshape(num_chunks, bs)
  if num_chunks == 1:
    out = f(idx[0])
  else:
    out = jax.lax.map(f, idx)
    out = jax.tree_util.tree_map(lambda a: a.reshape((num_chunks * bs,) + a.shape[2:]), out)
  return jax.tree_util.tree_map(lambda a: a[:n], out)
