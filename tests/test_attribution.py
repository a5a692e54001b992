"""Attribution methods: closed forms, axioms, and one contract over every method."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import attribution as A
from rattr_jax import models
from rattr_jax.attribution import _gradient, _integrated, _smoothgrad
from rattr_jax.testing import linear_model, quadratic_model

KEY = jax.random.key(0)


def _tanh_mlp(dtype=jnp.float32, din=12, c=3):
  k1, k2 = jax.random.split(jax.random.key(1))
  w1 = jax.random.normal(k1, (din, 16), dtype) / np.sqrt(din)
  w2 = jax.random.normal(k2, (16, c), dtype) / 4.0

  def fn(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2
  return fn


# ------------------------------------------------------------ closed forms --
@pytest.mark.parametrize("method", A.INTEGRATION_METHODS)
def test_linear_closed_forms(x64, method):
  model = linear_model(KEY, 12, 4, jnp.float64)
  x = jax.random.normal(jax.random.key(2), (5, 12), jnp.float64)
  b = jax.random.normal(jax.random.key(3), (12,), jnp.float64)
  t = jnp.array([0, 1, 2, 3, 1])
  np.testing.assert_allclose(A.gradient(model, x, t), model.W[t], rtol=1e-12)
  np.testing.assert_allclose(A.input_x_gradient(model, x, t), x * model.W[t], rtol=1e-12)
  ig = A.integrated_gradients(model, x, t, baseline=b, num_steps=7, method=method)
  np.testing.assert_allclose(ig, (x - b) * model.W[t], rtol=1e-10, atol=1e-12)


def test_gradient_on_image_linear_model(x64):
  model = linear_model(KEY, 4 * 4 * 3, 5, jnp.float64)
  x = jax.random.uniform(jax.random.key(4), (3, 4, 4, 3), jnp.float64)
  g = A.gradient(model, x, 2)
  np.testing.assert_allclose(g, jnp.broadcast_to(model.W[2].reshape(4, 4, 3), x.shape))


def test_quadratic_gradient(x64):
  q = quadratic_model(KEY, 9, 3, jnp.float64)
  x = jax.random.normal(jax.random.key(5), (4, 9), jnp.float64)
  t = jnp.array([2, 0, 1, 2])
  expected = jnp.einsum("bij,bj->bi", q.A[t], x) + q.b[t]
  np.testing.assert_allclose(A.gradient(q, x, t), expected, rtol=1e-10)


# ----------------------------------------------------------------- axioms --
@pytest.mark.parametrize("method", A.INTEGRATION_METHODS)
def test_ig_completeness_converges(x64, method):
  fn = _tanh_mlp(jnp.float64)
  x = jax.random.normal(jax.random.key(6), (3, 12), jnp.float64)
  base = 0.3 * jnp.ones((12,), jnp.float64)
  t = jnp.array([0, 1, 2])
  gap = fn(x)[jnp.arange(3), t] - fn(jnp.broadcast_to(base, x.shape))[jnp.arange(3), t]
  errs = []
  for n in (4, 16, 64):
    ig = A.integrated_gradients(fn, x, t, baseline=base, num_steps=n, method=method)
    errs.append(float(jnp.max(jnp.abs(ig.sum(1) - gap))))
  # Convergence at the order of each rule: O(1/n) for left/right Riemann,
  # O(1/n^2) for midpoint/trapezoid, spectral for Gauss-Legendre.
  if method == "gausslegendre":
    assert errs[-1] < 1e-9
  elif method in ("riemann_left", "riemann_right"):
    assert errs[0] / errs[1] > 3 and errs[1] / errs[2] > 3 and errs[-1] < 1e-2
  else:
    assert errs[0] / errs[1] > 10 and errs[1] / errs[2] > 10 and errs[-1] < 1e-4


def test_path_points_weights():
  for method in A.INTEGRATION_METHODS:
    a, w = A.path_points(10, method)
    assert a.shape == w.shape == (10,)
    np.testing.assert_allclose(w.sum(), 1.0)
    assert np.all((a >= 0) & (a <= 1))
  a, _ = A.path_points(4, "riemann_right")
  np.testing.assert_allclose(a, [0.25, 0.5, 0.75, 1.0])
  a, _ = A.path_points(4, "riemann_left")
  np.testing.assert_allclose(a, [0.0, 0.25, 0.5, 0.75])


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50])
def test_chunked_ig_equals_unchunked(chunk_size):
  fn = _tanh_mlp()
  x = jax.random.normal(jax.random.key(7), (4, 12))
  full = A.integrated_gradients(fn, x, 1, num_steps=20)
  chunked = A.integrated_gradients(fn, x, 1, num_steps=20, chunk_size=chunk_size)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)


def test_chunked_smoothgrad_equals_unchunked():
  fn = _tanh_mlp()
  x = jax.random.normal(jax.random.key(8), (4, 12))
  full = A.smoothgrad(fn, x, 1, key=KEY, num_samples=12)
  for bs in (1, 5, 12):
    np.testing.assert_allclose(A.smoothgrad(fn, x, 1, key=KEY, num_samples=12, chunk_size=bs),
                               full, rtol=1e-5, atol=1e-6)


def test_smoothgrad_tends_to_gradient():
  fn = _tanh_mlp()
  x = jax.random.normal(jax.random.key(9), (3, 12))
  g = A.gradient(fn, x, 0)
  # float32: the mean of 3 equal gradients is the gradient up to a few ulps.
  np.testing.assert_allclose(A.smoothgrad(fn, x, 0, key=KEY, stddev=0.0, num_samples=3), g,
                             rtol=1e-5, atol=1e-7)
  errs = [float(jnp.max(jnp.abs(A.smoothgrad(fn, x, 0, key=KEY, stddev=s, num_samples=64) - g)))
          for s in (0.3, 0.03, 0.003)]
  assert errs[0] > errs[1] > errs[2]
  assert errs[2] < 1e-3


def test_smoothgrad_moments_match_numpy():
  fn = _tanh_mlp()
  x = jax.random.normal(jax.random.key(10), (2, 12))
  n = 8
  sigma = 0.2 * (x.max(1, keepdims=True) - x.min(1, keepdims=True))
  grads = []
  for s in range(n):
    eps = jax.random.normal(jax.random.fold_in(KEY, s), x.shape)
    grads.append(A.gradient(fn, x + sigma * eps, 2))
  grads = np.stack(grads)
  np.testing.assert_allclose(A.smoothgrad(fn, x, 2, key=KEY, num_samples=n, stddev=0.2),
                             grads.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(A.smoothgrad(fn, x, 2, key=KEY, num_samples=n, stddev=0.2,
                                          squared=True), (grads ** 2).mean(0), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(A.vargrad(fn, x, 2, key=KEY, num_samples=n, stddev=0.2),
                             grads.var(0), rtol=1e-4, atol=1e-6)


def test_same_key_same_result():
  fn = _tanh_mlp()
  x = jax.random.normal(jax.random.key(11), (2, 12))
  a = A.smoothgrad(fn, x, 0, key=jax.random.key(3), num_samples=5)
  b = A.smoothgrad(fn, x, 0, key=jax.random.key(3), num_samples=5)
  c = A.smoothgrad(fn, x, 0, key=jax.random.key(4), num_samples=5)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


# ---------------------------------------------- one contract, every method --
def _cnn_fn():
  m = models.create_model("cnn", input_shape=(12, 12, 1), num_classes=5, seed=0,
                          activation="softplus:5")
  return models.as_fn(m)


METHODS = [
    ("gradient", A.gradient, {}, False),
    ("input_x_gradient", A.input_x_gradient, {}, False),
    ("integrated_gradients", A.integrated_gradients, {"num_steps": 6, "chunk_size": 4}, False),
    ("integrated_gradients_gl", A.integrated_gradients,
     {"num_steps": 5, "method": "gausslegendre"}, False),
    ("smoothgrad", A.smoothgrad, {"num_samples": 4, "key": KEY}, True),
    ("smoothgrad_sq", A.smoothgrad, {"num_samples": 4, "key": KEY, "squared": True}, True),
    ("vargrad", A.vargrad, {"num_samples": 4, "key": KEY, "chunk_size": 3}, True),
]


@pytest.fixture(scope="module")
def cnn_fn():
  return _cnn_fn()


@pytest.mark.parametrize("name,method,kwargs,random", METHODS, ids=[m[0] for m in METHODS])
def test_contract(cnn_fn, name, method, kwargs, random):
  fn = cnn_fn
  x = jax.random.uniform(jax.random.key(12), (3, 12, 12, 1))
  t = jnp.array([4, 0, 2])
  eager = method(fn, x, t, **kwargs)
  # Shape and dtype are kept.
  chex.assert_shape(eager, x.shape)
  assert eager.dtype == x.dtype
  assert np.all(np.isfinite(eager))
  # Jitted equals eager; one trace per shape.
  chex.clear_trace_counter()
  traced = jax.jit(chex.assert_max_traces(lambda xx, tt: method(fn, xx, tt, **kwargs), n=1))
  np.testing.assert_allclose(traced(x, t), eager, rtol=1e-5, atol=1e-7)
  traced(x + 0.01, jnp.array([1, 1, 1]))  # same shape: no retrace
  # vmap over a leading axis of batches works and agrees.
  xs = jnp.stack([x, x[::-1]])
  ts = jnp.stack([t, t[::-1]])
  vm = jax.vmap(lambda xx, tt: method(fn, xx, tt, **kwargs))(xs, ts)
  np.testing.assert_allclose(vm[0], eager, rtol=1e-5, atol=1e-7)
  if not random:
    # Batched with per-example targets equals one example at a time.
    per = jnp.concatenate([method(fn, x[i:i + 1], int(t[i]), **kwargs) for i in range(3)])
    np.testing.assert_allclose(eager, per, rtol=1e-5, atol=1e-7)


def test_public_calls_compile_once_per_shape(cnn_fn):
  x = jax.random.uniform(jax.random.key(13), (2, 12, 12, 1))
  _integrated._integrated_gradients.clear_cache()
  for i in range(3):
    A.integrated_gradients(cnn_fn, x + i, jnp.array([i, 1]), num_steps=4)
  assert _integrated._integrated_gradients._cache_size() == 1
  _gradient._gradient.clear_cache()
  for i in range(3):
    A.gradient(cnn_fn, x * i, i)
  assert _gradient._gradient._cache_size() == 1
  _smoothgrad._smoothgrad.clear_cache()
  for i in range(3):
    A.smoothgrad(cnn_fn, x, 1, key=jax.random.key(i), stddev=0.1 * i, num_samples=3)
  assert _smoothgrad._smoothgrad._cache_size() == 1


# --------------------------------------------------------------- bad input --
@pytest.mark.parametrize("call,match", [
    (lambda fn, x: A.gradient(fn, x[0], 0), "`x`"),
    (lambda fn, x: A.gradient(fn, x, 7), "`target`"),
    (lambda fn, x: A.gradient(fn, x, -1), "`target`"),
    (lambda fn, x: A.gradient(fn, x, jnp.array([0, 1, 2])), "`target`"),
    (lambda fn, x: A.gradient(fn, x, 0.5), "`target`"),
    (lambda fn, x: A.gradient(fn, x.at[0, 0].set(jnp.nan), 0), "NaN"),
    (lambda fn, x: A.gradient(fn, x.at[0, 0].set(jnp.inf), 0), "NaN"),
    (lambda fn, x: A.integrated_gradients(fn, x, 0, num_steps=0), "`num_steps`"),
    (lambda fn, x: A.integrated_gradients(fn, x, 0, method="simpson"), "`method`"),
    (lambda fn, x: A.integrated_gradients(fn, x, 0, baseline=jnp.zeros((3,))), "`baseline`"),
    (lambda fn, x: A.integrated_gradients(fn, x, 0, chunk_size=0), "`chunk_size`"),
    (lambda fn, x: A.smoothgrad(fn, x, 0, key=KEY, num_samples=0), "`num_samples`"),
    (lambda fn, x: A.smoothgrad(fn, x, 0, key=None), "`key`"),
    (lambda fn, x: A.smoothgrad(fn, x, 0, key=KEY, stddev=-0.1), "`stddev`"),
    (lambda fn, x: A.vargrad(fn, x, 0, key=KEY, num_samples=-2), "`num_samples`"),
])
def test_bad_input(call, match):
  fn = _tanh_mlp()
  x = jnp.ones((2, 12))
  with pytest.raises(ValueError, match=match):
    call(fn, x)


def test_fn_with_wrong_output_rank():
  with pytest.raises(ValueError, match="`fn`"):
    A.gradient(lambda x: x.sum(-1), jnp.ones((2, 3)), 0)


def test_nan_under_jit_propagates():
  """Documented: under an outer jit, values are not checked; NaN gives NaN."""
  fn = _tanh_mlp()
  x = jnp.ones((2, 12)).at[0, 0].set(jnp.nan)
  out = jax.jit(lambda xx: A.gradient(fn, xx, 0))(x)
  assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_memory_stays_bounded_when_differentiating_through_chunks(method):
  """Explanation attacks differentiate through the path / noise samples.

  With a fixed chunk (``chunk_size=4``) the compiled gradient needs the same
  temporary memory for 8 and 256 points, because every chunk is
  rematerialised (without `jax.checkpoint` it grows ~linearly: 0.13 MB ->
  3.2 MB here); in one chunk (``chunk_size=None``) it grows with the points.
  """
  from rattr_jax.testing import TanhMLP
  fn = TanhMLP(jax.random.key(0), 64, 256, 10)
  x = jax.random.uniform(jax.random.key(1), (4, 64))

  def temp_bytes(n, bs):
    if method == "integrated_gradients":
      f = lambda z: jnp.sum(A.integrated_gradients(fn, z, 3, num_steps=n,
                                                   chunk_size=bs) ** 2)
    else:
      f = lambda z: jnp.sum(A.smoothgrad(fn, z, 3, key=jax.random.key(0),
                                         num_samples=n, chunk_size=bs) ** 2)
    stats = jax.jit(jax.grad(f)).lower(x).compile().memory_analysis()
    return stats.temp_size_in_bytes

  small, large = temp_bytes(8, 4), temp_bytes(256, 4)
  assert large <= 1.1 * small, (small, large)
  assert temp_bytes(64, None) > 4 * temp_bytes(8, None)
