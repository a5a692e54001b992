"""Random draws shaped like a batch, drawn as ``[B, rest]`` matrices: the same bits, faster.

For threefry keys (JAX's default) ``jax.random.uniform(key, (B, H, W, C))`` and
``jax.random.uniform(key, (B, H * W * C)).reshape(B, H, W, C)`` are bit-identical
(the counters are the elements' row-major positions, partitionable or not), but
XLA:CPU vectorizes the generator's loop over the minor axis, which for an NHWC
image is its few channels. Drawn as ``[B, H * W * C]`` (alone, jitted, medians of
31; `tests/test_random.py` checks the equality):

uniform / normal / rademacher, ms before -> after:

* 128 x 32 x 32 x 3: 2.02 -> 0.60, 2.27 -> 0.80, 3.19 -> 0.60;
* 32 x 32 x 32 x 3: 0.78 -> 0.22, 0.92 -> 0.38, 0.75 -> 0.28;
* 128 x 28 x 28 x 1: 0.32 -> 0.26, 0.49 -> 0.45, 0.40 -> 0.22;
* 50 x 16 x 28 x 28 x 1: 2.33 -> 0.84, 2.17 -> 1.83, 1.35 -> 0.86.

Other key implementations (``rbg``, ``unsafe_rbg``) draw in the given shape, as
their bits depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


#: Whether draws of three or more axes are made as ``[B, rest]`` matrices (``False``:
#: in their own shape, the form before; for `benchmarks/fused_steps.py`). Read when traced.
MATRIX_DRAWS = True


def _matrix_shape(key: jax.Array, shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if len(shape) <= 2 or not MATRIX_DRAWS:
    return shape
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    impl = str(jax.random.key_impl(key))
  else:  # a raw uint32 key: the configured default implementation
    impl = str(jax.config.jax_default_prng_impl)
  return (shape[0], math.prod(shape[1:])) if impl == "threefry2x32" else shape


def uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32, minval=0.0,
            maxval=1.0) -> jax.Array:
  """`jax.random.uniform`, the same values."""
  return jax.random.uniform(key, _matrix_shape(key, shape), dtype, minval, maxval).reshape(shape)


def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """`jax.random.normal`, the same values."""
  return jax.random.normal(key, _matrix_shape(key, shape), dtype).reshape(shape)


def rademacher(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """`jax.random.rademacher`, the same values."""
  return jax.random.rademacher(key, _matrix_shape(key, shape), dtype).reshape(shape)


def bernoulli(key: jax.Array, p, shape: Sequence[int]) -> jax.Array:
  """`jax.random.bernoulli` with a scalar ``p``, the same values."""
  return jax.random.bernoulli(key, p, _matrix_shape(key, shape)).reshape(shape)
