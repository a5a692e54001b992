"""Tests for rattr_jax.curvature: closed forms, dense references, invariants, bad input."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rattr_jax import curvature as C
from rattr_jax import models
from rattr_jax.attribution import gradient, input_x_gradient
from rattr_jax.curvature import _geometry, _hvp, _spectrum, _trace
from rattr_jax.maps import saliency_map
from rattr_jax.testing import finite_difference_jvp, QuadraticModel

FWD, REV = "forward_over_reverse", "reverse_over_reverse"


# ----------------------------------------------------------------------------
# Helpers and small problems.


def _randn(seed, *shape):
  """Test data from numpy (``jax.random`` would compile a program per shape)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _quadratic(n=10, c=3, seed=0):
  """`rattr_jax.testing.QuadraticModel` with symmetric ``A [c, n, n]`` built with numpy."""
  rng = np.random.default_rng(seed + 100)
  m = rng.standard_normal((c, n, n))
  a = 0.5 * (m + np.swapaxes(m, 1, 2)) / np.sqrt(n)
  return QuadraticModel(jnp.asarray(a), jnp.asarray(rng.standard_normal((c, n)))), a


class _DiagQuadratic(NamedTuple):
  """Logit 0 is ``0.5 sum_i d_i z_i^2``, logit 1 its negative (d = 2: a sphere ``||z||^2``).

  A pytree, so problems with the same shapes share one compiled program.
  """

  d: jax.Array

  def __call__(self, z):
    s = 0.5 * jnp.sum(self.d * z.reshape(z.shape[0], -1) ** 2, axis=-1)
    return jnp.stack([s, -s], axis=1)


def _diag_quadratic(d):
  d = jnp.asarray(d, jnp.float64)

  def fn(z):
    f = z.reshape(z.shape[0], -1)
    s = 0.5 * jnp.sum(d * f * f, axis=-1) + jnp.sum(f, axis=-1)
    return jnp.stack([s, -s], axis=1)
  return fn


@pytest.fixture(scope="module")
def nets():
  """A small softplus CNN (8x8x1) and MLP (6 features), built once (init compiles per shape).

  ReLU versions are views with the activation swapped on the same weights.
  """
  rng = np.random.default_rng(0)

  def build(ctor):
    # Abstract init, then LeCun-normal weights from numpy: a real init would compile a
    # truncated-normal program per parameter shape (~0.7 s each on CPU).
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ctor(rngs=nnx.Rngs(0))))
    def fill(a):
      fan_in = int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 0
      scale = 1 / np.sqrt(fan_in) if fan_in else 0.1
      return jnp.asarray(scale * rng.standard_normal(a.shape), jnp.float32)
    return nnx.merge(graphdef, jax.tree.map(fill, state))

  cnn = build(functools.partial(models.MnistCNN, 3, in_channels=1, image_size=8,
                                activation="softplus:3"))
  mlp = build(functools.partial(models.MLP, 6, 3, hidden=(8, 8), activation="softplus:3"))
  return cnn, mlp


def _dense_ref(fn, x, t, objective="logit"):
  """Per-example dense Hessians by jax.hessian on single examples (reference)."""
  def s(xb, tb):
    logits = fn(xb[None])
    return _hvp.per_example_objective(logits, tb[None], objective)[0]
  n = int(np.prod(x.shape[1:]))
  return np.asarray(jax.jit(jax.vmap(jax.hessian(s)))(x, t)).reshape(x.shape[0], n, n)


@pytest.fixture(scope="module")
def cnn_setup(nets):
  with jax.enable_x64(True):
    m = nets[0]
    f64 = lambda fn: jax.tree.map(lambda a: a.astype(jnp.float64), fn)  # noqa: E731
    fast = f64(models.as_fn(m))
    lax_ = f64(models.as_fn(m, conv_impl="lax"))
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 8, 8, 1)))
    t = jnp.array([0, 1, 2])
    dense = _dense_ref(lax_, x, t)
  return fast, lax_, x, t, dense


# ----------------------------------------------------------------------------
# HVP.


@pytest.mark.parametrize("mode", ["auto", FWD, REV])
def test_hvp_quadratic_equals_av(x64, mode):
  fn, a = _quadratic()
  x = _randn(1, 4, 10)
  v = _randn(2, 4, 10)
  t = jnp.array([0, 1, 2, 1])
  hv = C.hvp(fn, x, t, v, mode=mode)
  np.testing.assert_allclose(hv, np.einsum("bij,bj->bi", a[np.asarray(t)], v), atol=1e-12)


def test_hvp_jit_eager_and_outer_jit_agree(x64):
  fn, _ = _quadratic()
  x = _randn(1, 4, 10)
  v = _randn(2, 4, 10)
  ref = C.hvp(fn, x, 1, v)
  with jax.disable_jit():
    eager = C.hvp(fn, x, 1, v)
  outer = jax.jit(lambda z, w: C.hvp(fn, z, 1, w))(x, v)
  np.testing.assert_allclose(eager, ref, atol=1e-12)
  np.testing.assert_allclose(outer, ref, atol=1e-12)


def test_hvp_mlp_matches_dense_hessian(x64, nets):
  fn = models.as_fn(nets[1])
  x = _randn(0, 3, 6)
  v = _randn(1, 3, 6)
  t = jnp.array([2, 0, 1])
  for objective in ("logit", "loss"):
    dense = _dense_ref(fn, x, t, objective)
    ref = np.einsum("bij,bj->bi", dense, v)
    for mode in (FWD, REV):
      hv = C.hvp(fn, x, t, v, objective=objective, mode=mode)
      np.testing.assert_allclose(hv, ref, atol=1e-10, err_msg=f"{objective} {mode}")


def test_hvp_cnn_matches_dense_hessian_all_modes(x64, cnn_setup):
  fast, lax_, x, t, dense = cnn_setup
  v = _randn(2, *x.shape)
  ref = np.einsum("bij,bj->bi", dense, v.reshape(3, -1)).reshape(x.shape)
  assert np.abs(ref).max() > 1e-3  # a genuinely curved function
  np.testing.assert_allclose(C.hvp(lax_, x, t, v, mode=FWD), ref, atol=1e-10)
  # The fast conv is a primitive with its own JVP and transposes: both modes, "auto" too.
  for mode in ("auto", FWD, REV):
    np.testing.assert_allclose(C.hvp(fast, x, t, v, mode=mode), ref, atol=1e-10, err_msg=mode)


def test_forward_mode_detection_and_error(nets, square_without_jvp):
  m = nets[0]
  x = jnp.zeros((2, 8, 8, 1))
  # Both convolutions have forward mode (the fast one is a primitive with a JVP).
  assert C.supports_forward_mode(models.as_fn(m), x)
  assert C.supports_forward_mode(models.as_fn(m, conv_impl="lax"), x)
  assert _hvp.resolve_mode("auto", models.as_fn(m), x) == FWD
  assert _hvp.resolve_mode("auto", models.as_fn(m, conv_impl="lax"), x) == FWD

  # A function with a jax.custom_vjp inside has none: "auto" falls back, FWD is refused.
  fn = lambda z: models.as_fn(m)(square_without_jvp(z))  # noqa: E731
  assert not C.supports_forward_mode(fn, x)
  assert _hvp.resolve_mode("auto", fn, x) == REV
  with pytest.raises(ValueError, match="custom_vjp"):
    C.hvp(fn, x, 0, x, mode=FWD)


def test_param_hvp_matches_dense(x64, nets):
  apply, params = models.functional(nets[1])
  params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
  x = _randn(0, 5, 6)
  t = jnp.array([0, 1, 2, 0, 1])
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  obj = lambda f: jnp.mean(_hvp.per_example_objective(apply(unravel(f), x), t, "loss"))  # noqa: E731
  h = np.asarray(jax.jit(jax.hessian(obj))(flat))
  vflat = _randn(3, *flat.shape)
  for mode in (FWD, REV):
    hv = C.param_hvp(apply, params, x, t, unravel(vflat), mode=mode)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(hv)[0], h @ vflat, atol=1e-10)
  eigs = C.param_hessian_eigs(apply, params, x, t, k=3, num_iters=flat.shape[0],
                              key=jax.random.key(0))
  ev = np.linalg.eigvalsh(h)
  np.testing.assert_allclose(eigs.eigenvalues, ev[::-1][:3], atol=1e-8)
  mag = ev[np.argsort(-np.abs(ev))][:3]
  np.testing.assert_allclose(eigs.magnitude_eigenvalues, mag, atol=1e-8)
  assert jax.tree.structure(eigs.eigenvectors) == jax.tree.structure(params)


# ----------------------------------------------------------------------------
# Lanczos.


def test_hessian_eigs_quadratic_matches_eigh(x64):
  fn, a = _quadratic(n=12)
  x = _randn(1, 4, 3, 4)  # eigenvectors shaped like x
  t = jnp.array([0, 1, 2, 0])
  r = C.hessian_eigs(fn, x, t, k=4, num_iters=12, key=jax.random.key(5))
  at = a[np.asarray(t)]
  ev = np.linalg.eigh(at)[0]
  np.testing.assert_allclose(r.eigenvalues, ev[:, ::-1][:, :4], atol=1e-6)
  mag = np.take_along_axis(ev, np.argsort(-np.abs(ev), axis=1), axis=1)[:, :4]
  np.testing.assert_allclose(r.magnitude_eigenvalues, mag, atol=1e-6)
  assert r.eigenvectors.shape == (4, 4, 3, 4)
  u = np.asarray(r.eigenvectors).reshape(4, 4, 12)
  np.testing.assert_allclose(np.einsum("bij,bkj->bki", at, u), r.eigenvalues[..., None] * u,
                             atol=1e-8)
  np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, atol=1e-10)
  np.testing.assert_allclose(r.ritz_values, ev, atol=1e-8)
  assert np.all(np.asarray(r.residuals) < 1e-8)
  # Batched equals per-example (a different key, so a different start vector).
  rb = C.hessian_eigs(fn, x[2:3], t[2:3], k=4, num_iters=12, key=jax.random.key(9))
  np.testing.assert_allclose(rb.eigenvalues[0], r.eigenvalues[2], atol=1e-10)


def test_hessian_eigs_converges_before_full_dimension_and_compiles_once(x64):
  # Extreme eigenvalues converge first: 30 of 60 iterations suffice for the top 2.
  # New weights, inputs, targets and keys of the same shapes reuse one compiled program.
  before = _spectrum._hessian_eigs._cache_size()
  for seed in range(3):
    fn, a = _quadratic(n=60, c=2, seed=seed)
    x = _randn(seed, 2, 60)
    r = C.hessian_eigs(fn, x, seed % 2, k=2, num_iters=30, key=jax.random.key(seed))
    ev = np.linalg.eigvalsh(a[seed % 2])
    np.testing.assert_allclose(r.eigenvalues[0], ev[::-1][:2], rtol=1e-3)
    # The residual estimate is an honest error bar.
    assert np.all(np.abs(np.asarray(r.eigenvalues[0]) - ev[::-1][:2]) <= r.residuals[0] + 1e-12)
  assert _spectrum._hessian_eigs._cache_size() <= before + 1


def test_hessian_eigs_cnn_and_mlp_top3_match_dense(x64, cnn_setup, nets):
  fast, lax_, x, t, dense = cnn_setup
  ev = np.linalg.eigvalsh(dense)
  r = C.hessian_eigs(fast, x, t, k=3, num_iters=40, key=jax.random.key(0))
  np.testing.assert_allclose(r.eigenvalues, ev[:, ::-1][:, :3], atol=1e-6)
  mag = np.take_along_axis(ev, np.argsort(-np.abs(ev), axis=1), axis=1)[:, :3]
  np.testing.assert_allclose(r.magnitude_eigenvalues, mag, atol=1e-6)
  fn = models.as_fn(nets[1])
  xm = _randn(0, 3, 6)
  tm = jnp.array([0, 1, 2])
  dm = np.linalg.eigvalsh(_dense_ref(fn, xm, tm))
  r = C.hessian_eigs(fn, xm, tm, k=3, num_iters=6, key=jax.random.key(0))
  np.testing.assert_allclose(r.eigenvalues, dm[:, ::-1][:, :3], atol=1e-6)


# ----------------------------------------------------------------------------
# Hutchinson, SLQ, effective rank.


def test_hutchinson_converges_within_stated_stderr(x64):
  fn, a = _quadratic(n=20, c=1)
  x = jnp.ones((1, 20), jnp.float64)
  tr_true = np.trace(a[0])
  fro_true = np.linalg.norm(a[0])
  z_tr, z_fro = [], []
  before = _trace._estimate._cache_size()
  for seed in range(20):
    key = jax.random.key(seed)
    tr = C.hutchinson_trace(fn, x, 0, key=key, num_samples=64)
    fr = C.hessian_frobenius_norm(fn, x, 0, key=key, num_samples=64)
    z_tr.append(float((tr.estimate[0] - tr_true) / tr.stderr[0]))
    z_fro.append(float((fr.estimate[0] - fro_true) / fr.stderr[0]))
    assert tr.samples.shape == (1, 64)
  assert _trace._estimate._cache_size() <= before + 1  # at most one program for 40 calls
  # Every estimate within 4 standard errors; the errors are calibrated (|z| ~ 0.8 on average).
  assert np.max(np.abs(z_tr)) < 4 and np.max(np.abs(z_fro)) < 4
  assert 0.3 < np.mean(np.abs(z_tr)) < 1.5 and 0.3 < np.mean(np.abs(z_fro)) < 1.5
  # The stated error is the sample standard deviation over sqrt(num_samples).
  np.testing.assert_allclose(tr.stderr, np.std(np.asarray(tr.samples), axis=1, ddof=1) / 8.0,
                             rtol=1e-10)
  np.testing.assert_allclose(fr.estimate ** 2, np.asarray(fr.samples).mean(axis=1), rtol=1e-10)
  _, se_one = _trace.mean_and_stderr(jnp.ones((2, 1)))
  assert np.all(np.isinf(np.asarray(se_one)))


def test_slq_and_effective_rank_exact_for_diagonal_hessian(x64):
  d = np.array([3.0, -2.0, 1.0, 0.5, 0.25, 0.0, 0.0, 4.0])
  fn = _diag_quadratic(d)
  x = jnp.zeros((2, 8), jnp.float64)
  sd = C.spectral_density(fn, x, 0, key=jax.random.key(0), num_samples=3, num_iters=8)
  np.testing.assert_allclose(np.asarray(sd.weights).sum(-1), 1.0, atol=1e-12)
  np.testing.assert_allclose(sd.trace(lambda z: z), d.sum(), atol=1e-10)
  np.testing.assert_allclose(sd.trace(jnp.square), (d ** 2).sum(), atol=1e-10)
  lo, hi = sd.spectral_range()
  np.testing.assert_allclose(lo, -2.0, atol=1e-10)
  np.testing.assert_allclose(hi, 4.0, atol=1e-10)
  grid = jnp.linspace(-4, 6, 4001)
  dens = sd.density(grid, sigma=0.1)
  np.testing.assert_allclose(np.trapezoid(dens, grid, axis=1), 1.0, atol=1e-6)
  lam = np.abs(d)
  p = lam[lam > 0] / lam.sum()
  want = {"entropy": np.exp(-(p * np.log(p)).sum()), "stable": (d ** 2).sum() / 16.0,
          "participation": lam.sum() ** 2 / (d ** 2).sum()}
  er = C.effective_rank(fn, x, 0, key=jax.random.key(1), num_samples=2, num_iters=8)
  np.testing.assert_allclose(er, want["entropy"], rtol=1e-8)
  for kind, w in want.items():  # every kind, from the same SLQ quadrature
    er = _geometry.effective_rank_from_density(sd, kind)
    np.testing.assert_allclose(er, w, rtol=1e-8, err_msg=kind)


# ----------------------------------------------------------------------------
# Geometry.


def test_principal_curvature_sphere_closed_form(x64):
  sphere = _DiagQuadratic(jnp.full((6,), 2.0, jnp.float64))  # s = ||x||^2
  x = _randn(0, 5, 6) * jnp.array(
      [0.5, 1.0, 2.0, 4.0, 0.0])[:, None]
  r = C.principal_curvature(sphere, x, 0, num_iters=5, k=3, key=jax.random.key(1))
  # The last example sits at the centre: zero gradient, no level set; flagged, not NaN.
  assert not bool(r.defined[4]) and float(r.curvature[4]) == 0.0
  assert np.all(np.isfinite(np.asarray(r.directions)))
  r = jax.tree.map(lambda a: a[:4], r)
  x = np.asarray(x[:4])
  radius = np.linalg.norm(x, axis=1)
  np.testing.assert_allclose(r.principal_curvatures, np.repeat(1 / radius[:, None], 3, 1),
                             rtol=1e-10)
  np.testing.assert_allclose(r.curvature, 1 / radius, rtol=1e-10)
  np.testing.assert_allclose(r.gradient_norm, 2 * radius, rtol=1e-10)
  # Principal directions are tangent (orthogonal to the normal x).
  assert np.abs(np.einsum("bkn,bn->bk", np.asarray(r.directions), x)).max() < 1e-10


def test_principal_curvature_ellipsoid_axis_points(x64):
  # s = 0.5 sum d_i x_i^2 at x = a e_0: grad = d_0 a e_0 and P H P = diag(0, d_1, ...), so
  # the principal curvatures are d_i / (d_0 a), i >= 1.
  d = np.array([1.0, 2.0, -3.0, 0.5, 5.0, -0.25])
  a = np.array([0.5, 2.0, 1.0, 3.0, 0.7])
  x = jnp.zeros((5, 6), jnp.float64).at[:, 0].set(a)
  C.principal_curvature(_DiagQuadratic(jnp.asarray(2.0 * d)), x, 0, num_iters=5, k=3,
                        key=jax.random.key(1))
  before = _geometry._principal_curvature._cache_size()
  r = C.principal_curvature(_DiagQuadratic(jnp.asarray(d)), x, 0, num_iters=5, k=3,
                            key=jax.random.key(0))
  # Another model of the same structure (other weights) reuses the compiled program.
  assert _geometry._principal_curvature._cache_size() == before
  for b in range(5):
    want = d[1:] / (d[0] * a[b])
    want = want[np.argsort(-np.abs(want))][:3]
    np.testing.assert_allclose(r.principal_curvatures[b], want, rtol=1e-10)


def test_gradient_angles_quadratic(x64):
  fn, a = _quadratic(n=10, c=1)
  x = _randn(3, 2, 10)
  r = C.gradient_angles(fn, x, 0, k=3, num_iters=10, key=jax.random.key(0))
  g = np.asarray(jax.grad(lambda z: jnp.sum(fn(z)[:, 0]))(x))
  ev, u = np.linalg.eigh(a[0])
  order = np.argsort(-np.abs(ev))[:3]
  for b in range(2):
    cos = np.abs(u[:, order].T @ g[b]) / np.linalg.norm(g[b])
    np.testing.assert_allclose(r.cosines[b], cos, atol=1e-8)
    np.testing.assert_allclose(r.angles[b], np.degrees(np.arccos(cos)), atol=1e-5)
  assert 80 < C.random_direction_angle(784) < 90


# ----------------------------------------------------------------------------
# Explanation sensitivity.


def test_explanation_sensitivity_matches_finite_differences(x64, cnn_setup):
  fast, lax_, x, t, _ = cnn_setup
  v = _randn(4, *x.shape)
  # Forward mode (lax convs, gradient map) and the double-VJP fallback (fast convs,
  # input x gradient map).
  cases = [(lax_, None), (fast, input_x_gradient)]
  for fn, explain in cases:
    def m(z, fn=fn, explain=explain):
      attr = (jax.grad(lambda w: jnp.sum(fn(w)[jnp.arange(3), t]))(z) if explain is None
              else explain(fn, z, t, key=None))
      return saliency_map(attr)
    got = C.explanation_sensitivity(fn, gradient if explain is None else explain, x, t, v)
    want = finite_difference_jvp(jax.jit(m), x, v, eps=1e-5)
    assert got.shape == (3, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-7 * float(np.abs(want).max()) + 1e-9)
    # The normalised map sums to one, so its derivative sums to zero.
    np.testing.assert_allclose(np.asarray(got).sum(axis=(1, 2)), 0.0, atol=1e-10)
  # Un-normalised, signed map: the sensitivity of the gradient is exactly H v.
  raw = C.explanation_sensitivity(lax_, gradient, x, t, v, reduce="none", normalize="none")
  np.testing.assert_allclose(raw, C.hvp(lax_, x, t, v), atol=1e-12)


# ----------------------------------------------------------------------------
# ReLU networks: zero Hessian, zeros not NaN.


def test_relu_network_returns_zeros_not_nan(nets):
  # A ReLU CNN with max-pooling is piecewise linear in x: its logit Hessian is 0 a.e.
  fn = models.as_fn(nets[0], activation="relu")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(3, 8, 8, 1)), jnp.float32)
  t = jnp.array([0, 1, 2])
  v = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  key = jax.random.key(2)
  assert np.all(np.asarray(C.hvp(fn, x, t, v)) == 0)
  r = C.hessian_eigs(fn, x, t, k=3, num_iters=8, key=key)
  for leaf in jax.tree.leaves(r):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert np.all(np.asarray(r.eigenvalues) == 0) and np.all(np.asarray(r.ritz_values) == 0)
  assert np.all(np.asarray(r.num_restarts) == 7)
  u = np.asarray(r.eigenvectors).reshape(3, 3, -1)
  np.testing.assert_allclose(np.einsum("bkn,bjn->bkj", u, u), np.broadcast_to(np.eye(3), (3, 3, 3)),
                             atol=1e-5)
  # The loss objective keeps its Gauss-Newton part: not zero.
  assert np.abs(np.asarray(C.hvp(fn, x, t, v, objective="loss"))).max() > 0
  # The other functions on a ReLU MLP: exactly 0 (with 0 error), finite densities.
  mlp = models.as_fn(nets[1], activation="relu")
  xm = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
  pc = C.principal_curvature(mlp, xm, t, num_iters=5, key=key)
  assert np.all(np.asarray(pc.curvature) == 0) and np.all(np.asarray(pc.defined))
  assert np.all(np.asarray(C.explanation_sensitivity(mlp, gradient, xm, t, xm)) == 0)
  for est in (C.hutchinson_trace(mlp, xm, t, key=key, num_samples=4),
              C.hessian_frobenius_norm(mlp, xm, t, key=key, num_samples=4)):
    assert np.all(np.asarray(est.estimate) == 0) and np.all(np.asarray(est.stderr) == 0)
  sd = C.spectral_density(mlp, xm, t, key=key, num_samples=2, num_iters=5)
  assert np.all(np.isfinite(np.asarray(sd.density(jnp.linspace(-1, 1, 11), sigma=0.1))))
  for kind in C.EFFECTIVE_RANKS:
    assert np.all(np.asarray(_geometry.effective_rank_from_density(sd, kind)) == 0)


# ----------------------------------------------------------------------------
# Bad input.


def test_bad_input_raises_value_error():
  fn, _ = _quadratic(n=6)
  x = jnp.ones((2, 6))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="`k`"):
    C.hessian_eigs(fn, x, 0, k=5, num_iters=4, key=key)
  with pytest.raises(ValueError, match="`num_iters`"):
    C.hessian_eigs(fn, x, 0, k=2, num_iters=7, key=key)
  with pytest.raises(ValueError, match="`num_iters`"):
    C.spectral_density(fn, x, 0, num_iters=7, key=key)
  with pytest.raises(ValueError, match="tangent"):
    C.principal_curvature(fn, x, 0, num_iters=6, key=key)
  with pytest.raises(ValueError, match="`v`"):
    C.hvp(fn, x, 0, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="`v`"):
    C.explanation_sensitivity(fn, gradient, x, 0, jnp.ones((3, 6)))
  for n in (0, -1):
    with pytest.raises(ValueError, match="`num_samples`"):
      C.hutchinson_trace(fn, x, 0, key=key, num_samples=n)
    with pytest.raises(ValueError, match="`num_samples`"):
      C.hessian_frobenius_norm(fn, x, 0, key=key, num_samples=n)
    with pytest.raises(ValueError, match="`num_samples`"):
      C.spectral_density(fn, x, 0, key=key, num_samples=n, num_iters=3)
  with pytest.raises(ValueError, match="`key`"):
    C.hessian_eigs(fn, x, 0, k=1, num_iters=2, key=None)
  with pytest.raises(ValueError, match="`mode`"):
    C.hvp(fn, x, 0, x, mode="forward")
  with pytest.raises(ValueError, match="`objective`"):
    C.hvp(fn, x, 0, x, objective="prob")
  with pytest.raises(ValueError, match="`kind`"):
    C.effective_rank(fn, x, 0, key=key, num_iters=3, kind="nuclear")
  with pytest.raises(ValueError, match="`target`"):
    C.hvp(fn, x, 7, x)
  with pytest.raises(ValueError, match="max_features"):
    C.dense_hessian(fn, x, 0, max_features=5)


def test_dense_hessian_matches_closed_form(x64):
  fn, a = _quadratic(n=10)
  x = _randn(1, 4, 10)
  t = jnp.array([0, 1, 2, 1])
  np.testing.assert_allclose(C.dense_hessian(fn, x, t, chunk_size=4), a[np.asarray(t)],
                             atol=1e-12)
