"""Issue 18's API cases that return garbage instead of an error: each is now a one-line ValueError."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import attacks, attribution, explainers, metrics
from rattr_jax.testing import TanhMLP


def _cnn_like():
  w = jax.random.normal(jax.random.key(0), (8 * 8, 3))
  fn = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w)
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
  return fn, x


def test_targeted_attack_rejects_non_finite_mask():
  fn, x = _cnn_like()
  mask = np.zeros((8, 8), np.float32)
  mask[0, 0] = np.nan
  with pytest.raises(ValueError, match="`mask` contains NaN"):
    attacks.targeted_attack(fn, explainers.get("gradient"), x, 0, key=jax.random.key(0),
                            mask=mask)


@pytest.mark.parametrize("eps", [1e9, 2.0])
def test_attack_epsilon_wider_than_the_box_is_an_error(eps):
  fn, x = _cnn_like()
  with pytest.raises(ValueError, match="`epsilon`.*input_range"):
    attacks.random_sign_attack(fn, explainers.get("gradient"), x, 0, key=jax.random.key(0),
                               config=attacks.AttackConfig(epsilon=eps))


def test_faithfulness_estimate_single_patch_is_an_error():
  fn, x = _cnn_like()
  with pytest.raises(ValueError, match="`patch_size`"):
    metrics.faithfulness_estimate(fn, explainers.get("gradient"), x, 0, patch_size=8)
  # two patches still work and give finite correlations
  out = metrics.faithfulness_estimate(fn, explainers.get("gradient"), x, 0, patch_size=4)
  assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("method", [attribution.gradient, attribution.input_x_gradient])
def test_gradient_chunk_size_bounds_memory_and_keeps_values(method):
  fn = TanhMLP(jax.random.key(3), 4, 5, 3)
  x = jax.random.normal(jax.random.key(2), (7, 4))
  full = method(fn, x, 1)
  for c in (1, 3, 7, 10):
    np.testing.assert_allclose(np.asarray(method(fn, x, 1, chunk_size=c)), np.asarray(full),
                               rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="chunk_size"):
    method(fn, x, 1, chunk_size=0)
