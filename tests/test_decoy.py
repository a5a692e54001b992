"""Tests of DANCE decoys, decoy-enhanced saliency and saliency fidelity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rattr_jax import attribution as A
from rattr_jax import attacks, explainers, maps, metrics, models
from rattr_jax.attribution import _decoy, _decoy_solver as S
from rattr_jax.testing import linear_model


def _conv_relu(w, b, z):
  y = jax.lax.conv_general_dilated(z, w, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + b)


def _conv_relu_features(seed, cin, cout=3):
  """A random 3x3 conv + ReLU feature map (a nonlinear layer with dead units).

  A `jax.tree_util.Partial` of a module-level function: new weights reuse the
  compiled solver (the weights are traced).
  """
  k1, k2 = jax.random.split(jax.random.key(seed))
  w = jax.random.normal(k1, (3, 3, cin, cout)) / 3.0
  b = 0.3 * jax.random.normal(k2, (cout,))
  return jax.tree_util.Partial(_conv_relu, w, b)


def _tanh_mlp(num_features, num_classes=3, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  w1 = jax.random.normal(k1, (num_features, 8)) / np.sqrt(num_features)
  w2 = jax.random.normal(k2, (8, num_classes))

  def fn(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2

  return fn


def _identity(z):
  return z


# One logits function for the tests below, so equal settings share compilations.
_FN = _tanh_mlp(36)


def _dead(z):
  """A layer that is constant on [0, 1] inputs: decoys may move freely."""
  return jax.nn.relu(z - 2.0)


def _patch_mask(offset, shape, k):
  m = np.zeros(shape, bool)
  m[offset[0]:offset[0] + k, offset[1]:offset[1] + k] = True
  return m


# ----------------------------------------------------------- constraints ----
# Examples differ in traced values (weights, inputs, epsilon, input range) and in
# two (patch_size, stride) pairs, so the solver compiles at most twice.
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), geometry=st.sampled_from([(2, 2), (3, 1)]),
       epsilon=st.floats(0.0, 0.5), bound=st.floats(0.02, 2.0))
def test_every_returned_decoy_satisfies_its_constraints(seed, geometry, epsilon, bound):
  h, w, c = 5, 5, 2
  patch_size, stride = geometry
  features = _conv_relu_features(seed, c)
  x = jax.random.uniform(jax.random.key(seed), (2, h, w, c))
  max_change = bound * jax.random.uniform(jax.random.key(seed + 1), (h, w, c))
  res = A.generate_decoys(features, x, key=jax.random.key(seed), patch_size=patch_size,
                          stride=stride, epsilon=epsilon, max_change=max_change, num_steps=15,
                          step_size=0.1, chunk_size=16)
  offsets = np.asarray(res.offsets)
  n2 = 2 * len(offsets)
  assert res.decoys.shape == (2, n2, h, w, c)
  # Fallback makes every returned decoy feasible; the flag is a re-evaluation.
  assert bool(jnp.all(res.feasible))
  dec = np.asarray(res.decoys)
  delta = dec - np.asarray(x)[:, None]
  # Layer constraint, evaluated independently (batched) on the returned decoys.
  f_dec = features(res.decoys.reshape((-1, h, w, c))).reshape((2, n2, -1))
  f_x = features(x).reshape((2, 1, -1))
  change = np.asarray(jnp.max(jnp.abs(f_dec - f_x), axis=-1))
  assert np.all(change <= epsilon + 1e-5)
  np.testing.assert_allclose(change, np.asarray(res.layer_change), atol=1e-5)
  # Valid range, zero outside the patch, per-feature bound.
  assert dec.min() >= 0.0 and dec.max() <= 1.0
  for j in range(n2):
    outside = ~_patch_mask(offsets[j // 2], (h, w, c), patch_size)
    assert np.all(delta[:, j][:, outside] == 0.0)
  assert np.all(np.abs(delta) <= np.asarray(max_change)[None, None] + 1e-6)
  # Objective is the one-sided l1 change of the returned decoy.
  sign = np.where(np.arange(n2) % 2 == 0, 1.0, -1.0)[None, :, None, None, None]
  np.testing.assert_allclose(np.maximum(sign * delta, 0).sum((2, 3, 4)),
                             np.asarray(res.objective), rtol=1e-5, atol=1e-6)


def test_without_max_change_decoys_move_further():
  features = _conv_relu_features(0, 2)
  x = jax.random.uniform(jax.random.key(3), (2, 5, 5, 2))
  kw = dict(key=jax.random.key(0), patch_size=2, stride=2, epsilon=0.3, num_steps=15,
            step_size=0.1, chunk_size=16)
  free = A.generate_decoys(features, x, **kw)
  tight = A.generate_decoys(features, x, max_change=0.01, **kw)
  assert float(jnp.max(jnp.abs(tight.decoys - x[:, None]))) <= 0.01 + 1e-7
  assert float(jnp.sum(free.objective)) > float(jnp.sum(tight.objective))


def test_solver_reaches_the_box_when_the_layer_is_blind():
  """F is constant on [0, 1]: the optimum moves the patch to the box bound."""
  x = jax.random.uniform(jax.random.key(0), (1, 6, 6, 1))
  res = A.generate_decoys(_dead, x, key=jax.random.key(1), patch_size=3, num_steps=50,
                          epsilon=0.0)
  dec = np.asarray(res.decoys[0])
  for j, off in enumerate(np.asarray(res.offsets)):
    m = _patch_mask(off, (6, 6, 1), 3)
    np.testing.assert_allclose(dec[2 * j][m], 1.0, atol=1e-6)  # s = +1 -> hi
    np.testing.assert_allclose(dec[2 * j + 1][m], 0.0, atol=1e-6)  # s = -1 -> lo
  assert not bool(jnp.any(res.fell_back))


def test_identity_layer_with_slack_attains_the_closed_form_optimum():
  """F = identity: the optimum is d = s * min(epsilon, room to the bound)."""
  eps = 0.1
  x = jax.random.uniform(jax.random.key(2), (1, 6, 6, 1))
  res = A.generate_decoys(lambda z: z, x, key=jax.random.key(3), patch_size=3,
                          epsilon=eps, num_steps=100)
  xn = np.asarray(x[0])
  for j, off in enumerate(np.asarray(res.offsets)):
    m = _patch_mask(off, xn.shape, 3)
    best_up = np.minimum(eps, 1.0 - xn[m]).sum()
    best_down = np.minimum(eps, xn[m]).sum()
    assert best_up * 0.9 <= float(res.objective[0, 2 * j]) <= best_up + 1e-5
    assert best_down * 0.9 <= float(res.objective[0, 2 * j + 1]) <= best_down + 1e-5
  assert float(jnp.max(res.layer_change)) <= eps


# ---------------------------------------------------------- degenerate ----
def test_identity_layer_without_slack_gives_no_motion_and_a_zero_map():
  x = jax.random.uniform(jax.random.key(4), (2, 6, 6, 1))
  fn = _FN
  res = A.decoy_saliency(fn, x, 1, layer=_identity, key=jax.random.key(0), epsilon=0.0,
                         num_steps=15)
  np.testing.assert_array_equal(np.asarray(res.decoys.decoys),
                                np.broadcast_to(np.asarray(x)[:, None], res.decoys.decoys.shape))
  assert int(jnp.sum(res.num_moved)) == 0
  assert np.all(np.asarray(res.num_used) == np.asarray(res.num_decoys))
  np.testing.assert_array_equal(np.asarray(res.attribution), 0.0)
  np.testing.assert_array_equal(np.asarray(res.saliency), 0.0)
  # Mean aggregation of identical decoys is the base map at x.
  mean = A.decoy_saliency(fn, x, 1, layer=_identity, key=jax.random.key(0), epsilon=0.0,
                          num_steps=15, aggregation="mean")
  np.testing.assert_allclose(np.asarray(mean.attribution), np.asarray(A.gradient(fn, x, 1)),
                             atol=1e-6)


def test_linear_model_range_map_is_zero():
  """Zero Hessian: gradient (and SmoothGrad) maps do not depend on the decoy.

  The paper notes DANCE is ill-defined for linear models; the decoys do move
  here (the layer is blind), yet the range of the gradient maps is exactly 0.
  Integrated gradients of a linear model is ``x * w``, whose range over the
  decoys is ``|w| * (max - min of the decoys)``.
  """
  x = jax.random.uniform(jax.random.key(5), (2, 6, 6, 1))
  lin = linear_model(jax.random.key(6), 36, 3)
  kw = dict(layer=_dead, key=jax.random.key(0), num_steps=15)
  res = A.decoy_saliency(lin, x, 2, base="gradient", **kw)
  assert int(jnp.min(res.num_moved)) > 0
  np.testing.assert_allclose(np.asarray(res.attribution), 0.0, atol=1e-5)
  res = A.decoy_saliency(lin, x, 2, base="integrated_gradients", ig_num_steps=4, **kw)
  dec = np.asarray(res.decoys.decoys)
  expect = np.abs(np.asarray(lin.W[2]).reshape(6, 6, 1)) * (dec.max(1) - dec.min(1))
  np.testing.assert_allclose(np.asarray(res.attribution), expect, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------- implementation ----
def test_vmapped_generation_equals_a_per_patch_loop(x64):
  def features(z):  # elementwise + 2x2 sum-pool: nonlinear, with slack
    a = jax.nn.relu(z - 0.5) + 0.05 * jnp.tanh(z)
    b, h, w, c = a.shape
    return a.reshape(b, h // 2, 2, w // 2, 2, c).sum((2, 4))

  x = jax.random.uniform(jax.random.key(7), (2, 4, 4, 1), jnp.float64)
  key = jax.random.key(8)
  kw = dict(epsilon=0.05, step_size=0.1)
  res = A.generate_decoys(features, x, key=key, patch_size=2, chunk_size=5, num_steps=25, **kw)
  hyper = S.make_hyper(x, init_multiplier=1.0, growth=1.02, init_scale=0.01, **kw)
  solve = jax.jit(functools.partial(S.solve_problem, features, patch_size=2, num_steps=25))
  offsets = np.asarray(res.offsets)
  lo, hi = jnp.asarray(0.0, x.dtype), jnp.asarray(1.0, x.dtype)
  noise = S.initial_noise(key, x, 2 * len(offsets))
  for b in range(2):
    for j in range(2 * len(offsets)):
      sign = jnp.asarray(S.SIGNS[j % 2], x.dtype)
      dec, feas, fell, change, obj, _ = solve(x[b], jnp.asarray(offsets[j // 2]), sign,
                                              noise[b, j], hyper, lo, hi, None)
      np.testing.assert_allclose(np.asarray(res.decoys[b, j]), np.asarray(dec), atol=1e-10)
      assert bool(res.feasible[b, j]) == bool(feas)
      assert bool(res.fell_back[b, j]) == bool(fell)
      np.testing.assert_allclose(float(res.objective[b, j]), float(obj), atol=1e-10)
  assert int(jnp.sum(res.moved)) > 0


def test_same_key_same_result_and_chunking_does_not_matter():
  features = _conv_relu_features(0, 1)
  x = jax.random.uniform(jax.random.key(9), (2, 6, 6, 1))
  fn = _FN
  kw = dict(layer=features, epsilon=0.2, num_steps=15, base="smoothgrad", num_samples=3)
  r1 = A.decoy_saliency(fn, x, 0, key=jax.random.key(1), chunk_size=7, **kw)
  r2 = A.decoy_saliency(fn, x, 0, key=jax.random.key(1), chunk_size=7, **kw)
  np.testing.assert_array_equal(np.asarray(r1.attribution), np.asarray(r2.attribution))
  np.testing.assert_array_equal(np.asarray(r1.decoys.decoys), np.asarray(r2.decoys.decoys))
  r3 = A.decoy_saliency(fn, x, 0, key=jax.random.key(1), chunk_size=None, **kw)
  np.testing.assert_allclose(np.asarray(r1.decoys.decoys), np.asarray(r3.decoys.decoys),
                             atol=1e-5)
  # Precomputed decoys give the same maps.
  gen = A.generate_decoys(features, x, key=jax.random.key(1), epsilon=0.2, num_steps=15,
                          chunk_size=7)
  np.testing.assert_array_equal(np.asarray(gen.decoys), np.asarray(r1.decoys.decoys))
  r5 = A.decoy_saliency(fn, x, 0, key=jax.random.key(1), decoys=gen, chunk_size=7,
                        base="smoothgrad", num_samples=3)
  np.testing.assert_allclose(np.asarray(r5.attribution), np.asarray(r1.attribution),
                             atol=1e-6)
  r4 = A.decoy_saliency(fn, x, 0, key=jax.random.key(2), chunk_size=7, **kw)
  assert not np.array_equal(np.asarray(r1.decoys.decoys), np.asarray(r4.decoys.decoys))
  # Post-processing is the paper's, via maps.saliency_map.
  np.testing.assert_allclose(
      np.asarray(r1.saliency),
      np.asarray(maps.saliency_map(r1.attribution, reduce="max_abs", normalize="winsorize")),
      atol=1e-6)
  assert float(jnp.min(r1.saliency)) >= 0.0 and float(jnp.max(r1.saliency)) <= 1.0 + 1e-6
  np.testing.assert_array_equal(np.asarray(r1.num_used + r1.num_dropped),
                                np.asarray(r1.num_decoys))


def test_custom_base_equals_named_base_and_epsilon_sweep_does_not_recompile():
  features = _conv_relu_features(1, 1)
  x = jax.random.uniform(jax.random.key(10), (2, 6, 6, 1))
  fn = _FN
  kw = dict(layer=features, key=jax.random.key(0), num_steps=15)
  named = A.decoy_saliency(fn, x, 2, base="gradient", **kw)
  custom = A.decoy_saliency(fn, x, 2, base=A.gradient, **kw)
  np.testing.assert_allclose(np.asarray(named.attribution), np.asarray(custom.attribution),
                             atol=1e-6)
  # DANCE as an explainer (bound settings, hashable); its map is the post-processed saliency.
  explain = explainers.get("decoy", base="gradient", layer=features, num_steps=15)
  assert explain == explainers.get("decoy", base="gradient", layer=features, num_steps=15)
  attr = explain(fn, x, 2, key=kw["key"])
  np.testing.assert_allclose(np.asarray(attr), np.asarray(named.attribution), atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(maps.saliency_map(attr, reduce="max_abs", normalize="winsorize")),
      np.asarray(named.saliency), atol=1e-6)
  before = _decoy._decoy_saliency._cache_size()
  for eps in (0.05, 0.1, 0.3):
    A.decoy_saliency(fn, x, 2, base="gradient", epsilon=eps, step_size=eps, **kw)
  assert _decoy._decoy_saliency._cache_size() == before


def test_dance_explainer_is_differentiable_and_attackable():
  """DANCE is an explainer like any other: its map has an input gradient and can be attacked."""
  features = _conv_relu_features(1, 1)
  x = jax.random.uniform(jax.random.key(14), (2, 6, 6, 1), minval=0.1, maxval=0.9)
  t = jnp.argmax(_FN(x), -1)
  key = jax.random.key(0)
  dance = explainers.get("decoy", base="gradient", layer=features, num_steps=5, epsilon=0.2)
  mask = jnp.zeros((6, 6)).at[:3].set(1.0)
  g = jax.grad(lambda z: jnp.sum(maps.saliency_map(dance(_FN, z, t, key=key)) * mask))(x)
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.max(jnp.abs(g))) > 0
  cfg = attacks.AttackConfig(num_steps=2, k=5, epsilon=0.05, step_size=0.02)
  r = attacks.targeted_attack(_FN, dance, x, t, key=key, mask=mask, config=cfg)
  assert float(jnp.max(jnp.abs(r.x_adv - x))) <= 0.05 + 1e-6
  np.testing.assert_array_equal(jnp.argmax(_FN(r.x_adv), -1), t)
  assert np.all(np.asarray(r.objective) >= np.asarray(r.initial_objective))
  assert bool(jnp.any(r.success))


# ------------------------------------------------------------- bad input ----
def test_bad_input_raises_value_error():
  x = jax.random.uniform(jax.random.key(11), (1, 6, 6, 1))
  fn = _FN
  ok = dict(layer=_identity, key=jax.random.key(0))
  with pytest.raises(ValueError, match="patch_size"):
    A.decoy_saliency(fn, x, 0, patch_size=7, **ok)
  with pytest.raises(ValueError, match="stride"):
    A.decoy_saliency(fn, x, 0, stride=0, **ok)
  with pytest.raises(ValueError, match="stride"):
    A.generate_decoys(lambda z: z, x, key=jax.random.key(0), stride=-1)
  with pytest.raises(ValueError, match="epsilon"):
    A.decoy_saliency(fn, x, 0, epsilon=-0.1, **ok)
  with pytest.raises(ValueError, match="aggregation"):
    A.decoy_saliency(fn, x, 0, aggregation="median", **ok)
  with pytest.raises(ValueError, match="base"):
    A.decoy_saliency(fn, x, 0, base="lrp", **ok)
  with pytest.raises(ValueError, match="`x` must lie inside `input_range`"):
    A.decoy_saliency(fn, x + 2.0, 0, **ok)
  with pytest.raises(ValueError, match="`input_range` must satisfy lo < hi"):
    A.decoy_saliency(fn, x, 0, input_range=(1.0, 0.0), **ok)
  with pytest.raises(TypeError):
    A.decoy_saliency(fn, x, 0, bounds=(0.0, 1.0), **ok)  # the old name is gone
  with pytest.raises(ValueError, match="key"):
    A.decoy_saliency(fn, x, 0, layer=lambda z: z, key=None)
  model = models.create_model("cnn", input_shape=(8, 8, 1), num_classes=3, seed=0)
  xm = jax.random.uniform(jax.random.key(12), (1, 8, 8, 1))
  cnn = models.as_fn(model)
  with pytest.raises(ValueError, match=r"Unknown `layer` 'conv9'.*conv1"):
    A.decoy_saliency(cnn, xm, 0, layer="conv9", model=model, key=jax.random.key(0))
  with pytest.raises(ValueError, match="model"):
    A.decoy_saliency(cnn, xm, 0, layer="conv1", key=jax.random.key(0))


def test_layer_name_resolves_through_the_model():
  # conv_impl="lax": the fast custom-VJP conv doubles compile time for tiny inputs.
  model = models.create_model("cnn", input_shape=(8, 8, 1), num_classes=3, seed=0,
                              conv_impl="lax")
  x = jax.random.uniform(jax.random.key(13), (1, 8, 8, 1))
  fn = models.as_fn(model)
  kw = dict(key=jax.random.key(0), patch_size=4, epsilon=0.05, num_steps=10)
  by_name = A.decoy_saliency(fn, x, 1, layer="conv2", model=model, **kw)
  assert float(jnp.max(by_name.decoys.layer_change)) <= 0.05
  change = jnp.max(jnp.abs(models.feature_fn(model, "conv2")(by_name.decoys.decoys[0])
                           - models.feature_fn(model, "conv2")(x)), axis=(1, 2, 3))
  assert float(jnp.max(change)) <= 0.05 + 1e-6


def test_default_layer_is_the_models_own_choice_else_the_second_submodule():
  shapes = {"cnn": (8, 8, 1), "lenet": (8, 8, 3), "resnet18": (8, 8, 3)}
  want = {"cnn": "conv2", "lenet": "conv2", "resnet18": "blocks.1"}
  for name, shape in shapes.items():
    m = models.create_model(name, input_shape=shape, num_classes=3, widths=None
                            if name != "resnet18" else (2, 2, 2, 2))
    assert A.decoy_default_layer(m) == want[name]
  mlp = models.create_model("mlp", input_shape=(6,), num_classes=3)
  assert A.decoy_default_layer(mlp) == models.layer_names(mlp)[1]


# -------------------------------------------------------------- fidelity ----
def test_saliency_fidelity_closed_form():
  lin = linear_model(jax.random.key(14), 12, 4)
  x = jax.random.uniform(jax.random.key(15), (3, 2, 2, 3))
  sal = jax.random.uniform(jax.random.key(16), (3, 2, 2))
  # A non-negative map repeated over channels is its own max_abs pixel map.
  smaps = explainers.precomputed(jnp.broadcast_to(sal[..., None], x.shape))
  got = np.asarray(metrics.saliency_fidelity(lin, smaps, x, 1, normalize="none"))
  xn, sn = np.asarray(x, np.float64), np.asarray(sal, np.float64)
  w, b = np.asarray(lin.W, np.float64), np.asarray(lin.b, np.float64)

  def log_p1(z):
    logits = z.reshape(3, -1) @ w.T + b
    return logits[:, 1] - np.log(np.exp(logits).sum(1))

  expect = -(log_p1(sn[..., None] * xn) - log_p1(sn.mean((1, 2))[:, None, None, None] * xn))
  np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
  # Element-wise maps (reduce="none") weight each channel by its own value.
  got_el = np.asarray(metrics.saliency_fidelity(lin, smaps, x, 1, reduce="none",
                                                normalize="none"))
  np.testing.assert_allclose(got_el, got, rtol=1e-5, atol=1e-6)
  # A constant map gives 0; the default post-processing (winsorize to [0, 1])
  # equals fidelity of the post-processed map.
  const = explainers.precomputed(jnp.full(x.shape, 0.7))
  np.testing.assert_allclose(np.asarray(metrics.saliency_fidelity(lin, const, x, 1)), 0.0,
                             atol=1e-6)
  grad = explainers.get("gradient")
  post = maps.saliency_map(grad(lin, x, 1), reduce="max_abs", normalize="winsorize")
  np.testing.assert_allclose(
      np.asarray(metrics.saliency_fidelity(lin, grad, x, 1)),
      np.asarray(metrics.saliency_fidelity(
          lin, explainers.precomputed(jnp.broadcast_to(post[..., None], x.shape)), x, 1,
          normalize="none")), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="explainer"):
    metrics.saliency_fidelity(lin, explainers.precomputed(sal), x, 1)
  with pytest.raises(ValueError, match="normalize"):
    metrics.saliency_fidelity(lin, grad, x, 1, normalize="bogus")


@pytest.mark.slow
def test_trained_cnn_decoys_are_feasible_and_move(trained_cnn):
  model, data = trained_cnn
  fn = models.as_fn(model, conv_impl="lax")
  x = jnp.asarray(data.x_test[:1])
  t = jnp.argmax(fn(x), -1)
  features = models.feature_fn(model, "conv1", conv_impl="lax")
  res = A.decoy_saliency(fn, x, t, layer=features, key=jax.random.key(0), patch_size=7,
                         epsilon=0.2, num_steps=30)
  assert int(res.num_decoys[0]) == 32
  assert int(res.num_used[0]) == 32 and int(res.num_moved[0]) > 0
  change = jnp.max(jnp.abs(features(res.decoys.decoys[0]) - features(x)), axis=(1, 2, 3))
  assert float(jnp.max(change)) <= 0.2 + 1e-5
  assert float(jnp.max(res.attribution)) > 0.0


def test_feature_fns_of_one_architecture_share_one_compiled_program():
  """`feature_fn` closes over the weights as pytree leaves and a value-compared apply, so a
  DANCE explainer bound to another model of the same architecture reuses the program."""
  import chex
  from rattr_jax import models
  ms = [models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=s)
        for s in (0, 1)]
  fs = [models.feature_fn(m, "conv2") for m in ms]

  @jax.jit
  @chex.assert_max_traces(n=1)
  def feats(f, x):
    return f(x)

  x = jnp.linspace(0.0, 1.0, 2 * 28 * 28).reshape(2, 28, 28, 1)
  a, b = feats(fs[0], x), feats(fs[1], x)
  assert not np.allclose(a, b)  # different weights, one trace
  np.testing.assert_allclose(b, models.feature_fn(ms[1], "conv2")(x), rtol=1e-5, atol=1e-6)
