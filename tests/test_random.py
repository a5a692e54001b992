"""`rattr_jax._random` draws the same values as `jax.random`, in any shape, key kind and transform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import _random

SHAPES = [(5,), (4, 7), (3, 6, 5, 3), (2, 3, 4, 5, 1)]
DRAWS = {
    "uniform": (lambda k, s: _random.uniform(k, s, jnp.float32, -1.0, 2.0),
                lambda k, s: jax.random.uniform(k, s, jnp.float32, -1.0, 2.0)),
    "normal": (lambda k, s: _random.normal(k, s, jnp.float32),
               lambda k, s: jax.random.normal(k, s, jnp.float32)),
    "rademacher": (lambda k, s: _random.rademacher(k, s, jnp.float32),
                   lambda k, s: jax.random.rademacher(k, s, jnp.float32)),
    "bernoulli": (lambda k, s: _random.bernoulli(k, 0.3, s),
                  lambda k, s: jax.random.bernoulli(k, 0.3, s)),
}


@pytest.mark.parametrize("draw", sorted(DRAWS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_same_values_as_jax_random(draw, shape, impl):
  ours, theirs = DRAWS[draw]
  key = jax.random.key(3, impl=impl)
  want = theirs(key, shape)
  got = ours(key, shape)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(jax.jit(ours, static_argnums=1)(key, shape), want)
  keys = jax.random.split(key, 3)
  np.testing.assert_array_equal(jax.vmap(lambda k: ours(k, shape))(keys),
                                jax.vmap(lambda k: theirs(k, shape))(keys))


@pytest.mark.parametrize("partitionable", [True, False])
def test_same_values_with_raw_keys_and_either_threefry_mode(partitionable):
  shape = (4, 5, 6, 3)
  with jax.threefry_partitionable(partitionable):
    raw = jax.random.PRNGKey(7)  # a raw uint32 key: the default implementation
    np.testing.assert_array_equal(_random.uniform(raw, shape), jax.random.uniform(raw, shape))
    typed = jax.random.key(7)
    np.testing.assert_array_equal(_random.normal(typed, shape), jax.random.normal(typed, shape))


def test_threefry_draws_are_matrices_and_others_keep_their_shape():
  shape = (4, 5, 6, 3)
  assert _random._matrix_shape(jax.random.key(0), shape) == (4, 90)
  assert _random._matrix_shape(jax.random.key(0, impl="rbg"), shape) == shape
  assert _random._matrix_shape(jax.random.key(0), (4, 5)) == (4, 5)
