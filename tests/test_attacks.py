"""Explanation attacks: invariants, strength on a trained CNN, gradients, batching, errors."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, Phase, settings, strategies as st

from rattr_jax import attacks, explainers, maps, metrics, models
from rattr_jax.attacks import _ghorbani
from rattr_jax.attacks import _dombrowski
from rattr_jax.attacks import _objectives as O
from rattr_jax.attribution import gradient, integrated_gradients, smoothgrad
from rattr_jax.testing import finite_difference_grad


def smooth_model(key, shape, num_classes=3, hidden=8, dtype=jnp.float32):
  """A tanh MLP on inputs of ``shape`` (no batch): smooth, so no surrogate needed."""
  f = math.prod(shape)
  k1, k2, k3 = jax.random.split(key, 3)
  w1 = (jax.random.normal(k1, (f, hidden)) * 3 / np.sqrt(f)).astype(dtype)
  b1 = (0.3 * jax.random.normal(k3, (hidden,))).astype(dtype)
  w2 = jax.random.normal(k2, (hidden, num_classes)).astype(dtype)

  def fn(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2

  return fn


def images(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, 0.05, 0.95)


ATTACKS = ("random_sign", "topk", "mass_center", "targeted")


def run_attack(name, fn, x, t, config, *, key, surrogate=None, explain=gradient, mask=None,
               chunk_size=None):
  if name == "targeted":
    if mask is None:
      mask = jnp.zeros(x.shape[1:3]).at[: x.shape[1] // 2].set(1.0)
    return attacks.targeted_attack(fn, explain, x, t, key=key, mask=mask, config=config,
                                   surrogate=surrogate, chunk_size=chunk_size)
  f = {"random_sign": attacks.random_sign_attack, "topk": attacks.topk_attack,
       "mass_center": attacks.mass_center_attack}[name]
  return f(fn, explain, x, t, key=key, config=config, surrogate=surrogate,
           chunk_size=chunk_size)


# ------------------------------------------------------------ invariants ----
@pytest.mark.slow
@settings(max_examples=10, deadline=None, phases=(Phase.explicit, Phase.generate))
@given(b=st.integers(1, 3), h=st.integers(4, 7), c=st.integers(1, 2),
       eps=st.floats(0.0, 0.2), attack=st.sampled_from(ATTACKS), seed=st.integers(0, 100),
       random_start=st.booleans())
# Found by hypothesis: the random starting point was the best iterate but was
# missing from the history.
@example(b=2, h=4, c=2, eps=0.14043560854152545, attack="targeted", seed=100, random_start=True)
def test_invariants(b, h, c, eps, attack, seed, random_start):
  key = jax.random.key(seed)
  shape = (b, h, h + 1, c)
  fn = smooth_model(key, shape[1:])
  x = images(jax.random.fold_in(key, 1), shape)
  label = jnp.argmax(fn(x), -1)
  cfg = attacks.AttackConfig(epsilon=eps, step_size=eps / 3 + 1e-3, num_steps=4, k=3,
                             random_start=random_start)
  r = run_attack(attack, fn, x, label, cfg, key=key)
  x_adv = np.asarray(r.x_adv)
  assert x_adv.shape == x.shape
  # Inside the eps-ball around x and the valid range.
  assert np.all(np.abs(x_adv - np.asarray(x)) <= eps + 1e-6)
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  # Never a label-flipped iterate: every returned example keeps the label.
  np.testing.assert_array_equal(np.argmax(fn(r.x_adv), -1), label)
  succ = np.asarray(r.success)
  obj, init = np.asarray(r.objective), np.asarray(r.initial_objective)
  # Success = improved objective. An unsuccessful example returns x itself
  # (random sign: only when the label flipped; it returns its noise otherwise).
  np.testing.assert_array_equal(succ, obj > init)
  back = ~np.asarray(r.label_kept_history[:, 0]) if attack == "random_sign" else ~succ
  np.testing.assert_array_equal(x_adv[back], np.asarray(x)[back])
  if attack != "random_sign":
    hist = np.asarray(r.objective_history)
    kept = np.asarray(r.label_kept_history)
    cols = 4 + int(random_start)  # with a random start, column 0 is the start
    assert hist.shape == (b, cols) and kept.shape == (b, cols)
    # The returned objective is the best seen among label-preserving iterates.
    best_seen = np.max(np.where(kept, hist, -np.inf), axis=1)
    np.testing.assert_allclose(obj, np.maximum(best_seen, init), rtol=1e-6, atol=1e-7)
    # best_step points at the returned iterate's column (-1: x itself).
    step = np.asarray(r.best_step)
    if random_start:
      assert np.all(step[~succ] == -1)
    col = step - (0 if random_start else 1)
    rows = np.flatnonzero(succ)
    np.testing.assert_allclose(hist[rows, col[rows]], obj[rows], rtol=1e-6, atol=1e-7)
    # ... and it is the objective of the returned x_adv (surrogate = fn here).
    ref = O.to_map(gradient(fn, x, label), "abs_sum", "sum_to_one")
    mask = jnp.zeros(x.shape[1:3]).at[: x.shape[1] // 2].set(1.0)
    name = {"topk": "topk", "mass_center": "mass_center", "targeted": "targeted"}[attack]
    aux = O.objective_aux(name, ref, 3, jnp.broadcast_to(mask, ref.shape))
    again = O.map_objective(name, O.to_map(gradient(fn, r.x_adv, label), "abs_sum",
                                           "sum_to_one"), aux)
    np.testing.assert_allclose(np.asarray(again), obj, rtol=1e-4, atol=1e-6)


# ------------------------------------------------ strength on a real CNN ----
@pytest.fixture(scope="module")
def cnn_setup(trained_cnn):
  model, data = trained_cnn
  fn = models.as_fn(model)
  sur = models.surrogate_fn(model, beta=10.0)
  x = jnp.asarray(data.x_test[:16])
  label = jnp.argmax(fn(x), -1)
  return model, fn, sur, x, label


def _maps(fn, x, t):
  return maps.saliency_map(gradient(fn, x, t))


@pytest.mark.slow
def test_attacks_beat_random_sign_on_trained_cnn(cnn_setup):
  _, fn, sur, x, label = cnn_setup
  cfg = attacks.AttackConfig(num_steps=100, k=50)  # epsilon = 8/255, step 0.5/255
  key = jax.random.key(0)
  m0 = _maps(fn, x, label)
  out = {}
  for name in ("random_sign", "topk", "mass_center"):
    r = run_attack(name, fn, x, label, cfg, key=key, surrogate=sur)
    np.testing.assert_array_equal(np.argmax(fn(r.x_adv), -1), label)
    assert float(jnp.max(jnp.abs(r.x_adv - x))) <= 8 / 255 + 1e-6
    m1 = _maps(fn, r.x_adv, label)
    out[name] = (float(metrics.topk_intersection(m0, m1, 50).mean()),
                 float(metrics.spearman(m0, m1).mean()),
                 float(metrics.center_shift(m0, m1).mean()))
    if name != "random_sign":
      assert float(r.success.mean()) > 0.9
      assert float(r.surrogate_agreement.mean()) > 0.8
  rand, topk, mc = out["random_sign"], out["topk"], out["mass_center"]
  # Measured (two runs): random 0.74-0.75 / 0.63-0.64 / 0.39-0.44 px; top-k 0.61-0.62 /
  # 0.60-0.61; centre 0.72-0.74 / 0.61-0.62 / 1.5 px. The centre attack optimises the shift,
  # so only its shift gets a margin.
  assert topk[0] < rand[0] - 0.08, out
  assert topk[1] < rand[1] - 0.015, out
  assert mc[1] < rand[1], out
  assert mc[2] > 2.5 * rand[2], out


@pytest.fixture(scope="module")
def cifar_setup():
  """The CIFAR LeNet trained briefly on the offline CIFAR-10 copy (natural images)."""
  from rattr_jax._quicktrain import fit
  from rattr_jax.data import load_dataset
  try:
    data = load_dataset("cifar10", max_train=CIFAR_TRAIN)
  except (FileNotFoundError, ValueError, RuntimeError) as e:  # pragma: no cover
    pytest.skip(f"offline CIFAR-10 copy not available: {e}")
  model = models.create_model("lenet", input_shape=data.input_shape, num_classes=10, seed=0)
  model = fit(model, data.x_train, data.y_train, epochs=CIFAR_EPOCHS, batch_size=64)
  fn = models.as_fn(model)
  xs = jnp.asarray(data.x_test[np.random.default_rng(0).permutation(len(data.x_test))[:64]])
  pred = jnp.argmax(fn(xs), -1)
  return model, fn, xs[:CIFAR_IMAGES], pred[:CIFAR_IMAGES]


CIFAR_TRAIN, CIFAR_EPOCHS, CIFAR_IMAGES = 10000, 3, 16


@pytest.mark.slow
def test_attacks_beat_random_sign_far_more_on_natural_images(cifar_setup):
  """Ghorbani's claim on CIFAR-10: targeted attacks move the map far more than noise.

  On MNIST the map's Spearman is dominated by the flat background, which any
  perturbation reorders (see the MNIST test above); on natural images the
  top-k and centre attacks lower top-k intersection and Spearman well beyond
  random signs at the same epsilon (also benchmarks/results/attack_strength.json,
  a longer-trained LeNet: at 8/255 on 32 images, top-100 0.57 / 0.25 / 0.43 and
  Spearman 0.69 / 0.46 / 0.53 for random / top-k / centre).
  """
  model, fn, x, label = cifar_setup
  sur = models.surrogate_fn(model, beta=10.0)
  k = 100
  cfg = attacks.AttackConfig(num_steps=100, k=k)  # epsilon 8/255, step 0.5/255 (paper)
  m0 = _maps(fn, x, label)
  drop = {}
  for name in ("random_sign", "topk", "mass_center"):
    r = run_attack(name, fn, x, label, cfg, key=jax.random.key(0), surrogate=sur)
    np.testing.assert_array_equal(np.argmax(fn(r.x_adv), -1), label)
    m1 = _maps(fn, r.x_adv, label)
    drop[name] = (1 - float(metrics.topk_intersection(m0, m1, k).mean()),
                  1 - float(metrics.spearman(m0, m1).mean()),
                  float(metrics.center_shift(m0, m1).mean()))
  # Measured drops (1 - top-100 overlap, 1 - Spearman, shift px), three keys:
  # random 0.37-0.39 / 0.24-0.26 / 0.26-0.31; top-k 0.63 / 0.38 / 0.74; centre
  # 0.47 / 0.36 / 1.70. Top-k removes 1.6x the overlap and 1.5x the Spearman
  # that noise removes; the centre attack 1.2x / 1.4x, and moves the centre 5x
  # as far (the benchmark's longer-trained LeNet on 32 images: top-k 1.8x / 1.7x).
  rand = drop["random_sign"]
  assert drop["topk"][0] > 1.45 * rand[0], drop
  assert drop["topk"][1] > 1.3 * rand[1], drop
  assert drop["mass_center"][0] > 1.1 * rand[0], drop
  assert drop["mass_center"][1] > 1.25 * rand[1], drop
  assert drop["mass_center"][2] > 3.0 * rand[2], drop


@pytest.mark.slow
def test_targeted_attack_raises_mass_in_mask(cnn_setup):
  _, fn, sur, x, label = cnn_setup
  mask = np.zeros((28, 28), np.float32)
  mask[:, :8] = 1.0  # a band on the left border
  cfg = attacks.AttackConfig(num_steps=100, k=50)
  r = attacks.targeted_attack(fn, gradient, x, label, mask=mask, config=cfg, key=jax.random.key(0),
                              surrogate=sur)
  before = jnp.sum(_maps(fn, x, label) * mask, axis=(1, 2))
  after = jnp.sum(_maps(fn, r.x_adv, label) * mask, axis=(1, 2))
  assert float(jnp.mean(after)) > 1.5 * float(jnp.mean(before))
  assert float(jnp.mean(after > before)) > 0.9


@pytest.mark.slow
def test_frame_attack_moves_map_towards_frame(cnn_setup):
  model, fn, _, x, label = cnn_setup
  x, label = x[:8], label[:8]
  fam = attacks.softplus_family(model)
  r = attacks.frame_attack(fn, gradient, x, label, config=attacks.frame_config(epsilon=8 / 255),
                           key=jax.random.key(0), surrogate_family=fam)
  frame = jnp.broadcast_to(attacks.frame_map(28, 28), (8, 28, 28))
  m0 = maps.saliency_map(gradient(fn, x, label), normalize="max")
  m1 = maps.saliency_map(gradient(fn, r.x_adv, label), normalize="max")
  assert float(metrics.mse(m1, frame).mean()) < float(metrics.mse(m0, frame).mean()) - 0.02
  assert float(jnp.max(jnp.abs(r.x_adv - x))) <= 8 / 255 + 1e-6
  np.testing.assert_array_equal(np.argmax(fn(r.x_adv), -1), label)


# ---------------------------------------- gradients vs finite differences ----
def _fd_check(value, x, rtol=1e-5, atol=1e-8):
  g = jax.grad(lambda z: jnp.sum(value(z)))(x)
  total = jax.jit(lambda z: jnp.sum(value(z)))
  fd = finite_difference_grad(lambda z: float(total(jnp.asarray(z))), np.asarray(x), eps=1e-6)
  np.testing.assert_allclose(np.asarray(g), fd, rtol=rtol, atol=atol * np.abs(fd).max())


@pytest.mark.parametrize("objective", ["topk", "mass_center", "targeted"])
@pytest.mark.parametrize("method", ["gradient", "ig"])
def test_objective_gradients_match_finite_differences(x64, objective, method):
  key = jax.random.key(3)
  shape = (2, 4, 5, 2)
  fn = smooth_model(key, shape[1:], dtype=jnp.float64)
  x = images(jax.random.fold_in(key, 1), shape, jnp.float64)
  t = jnp.array([0, 2])
  explain = gradient if method == "gradient" else functools.partial(
      integrated_gradients, num_steps=6, chunk_size=4)  # 2 chunks: scan + checkpoint
  ref = O.to_map(explain(fn, x, t, key=None), "abs_sum", "sum_to_one")
  mask = jax.random.uniform(jax.random.fold_in(key, 2), ref.shape, jnp.float64)
  aux = O.objective_aux(objective, ref, 5, mask)
  value = lambda z: O.map_objective(objective, O.to_map(explain(fn, z, t, key=None), "abs_sum",
                                                        "sum_to_one"), aux)
  _fd_check(value, x + 0.01)


def test_manipulation_loss_gradient_matches_finite_differences(x64):
  key = jax.random.key(4)
  shape = (2, 4, 4, 1)
  fn = smooth_model(key, shape[1:], dtype=jnp.float64)
  x = images(jax.random.fold_in(key, 1), shape, jnp.float64)
  t = jnp.array([1, 0])
  tmap = jax.random.uniform(jax.random.fold_in(key, 2), (2, 4, 4), jnp.float64)
  p0 = jax.nn.softmax(fn(x))

  def value(z):
    m = O.to_map(gradient(fn, z, t), "abs_sum", "sum_to_hw")
    return O.manipulation_loss(m, tmap, jax.nn.softmax(fn(z)), p0, 3.0)

  _fd_check(value, x + 0.02)


def test_objectives_closed_forms():
  m = jnp.array([[[0.5, 0.1], [0.3, 0.1]]])
  mask = O.topk_mask(m, 2)
  np.testing.assert_array_equal(mask, [[[1, 0], [1, 0]]])
  np.testing.assert_allclose(O.topk_objective(m, mask), [-0.8])
  np.testing.assert_allclose(O.targeted_objective(m, 1 - mask), [0.2])
  # Centre of mass (row, col) = (0.4, 0.2); shifted reference (0, 0) -> 0.16 + 0.04.
  np.testing.assert_allclose(O.mass_center_objective(m, jnp.zeros((1, 2))), [0.2], rtol=1e-6)


# ------------------------------------------------ jit, batching, tracing ----
def test_jit_equals_eager():
  key = jax.random.key(5)
  fn = smooth_model(key, (4, 4, 1))
  x = images(jax.random.fold_in(key, 1), (2, 4, 4, 1))
  t = jnp.argmax(fn(x), -1)
  cfg = attacks.AttackConfig(num_steps=2, k=4, epsilon=0.1, step_size=0.02)
  r_jit = attacks.mass_center_attack(fn, gradient, x, t, config=cfg, key=key)
  with jax.disable_jit():
    r_eager = attacks.mass_center_attack(fn, gradient, x, t, config=cfg, key=key)
  np.testing.assert_allclose(r_jit.x_adv, r_eager.x_adv, atol=1e-6)
  np.testing.assert_allclose(r_jit.objective_history, r_eager.objective_history, rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize("attack", ["topk", "mass_center", "targeted", "manipulation"])
def test_batched_equals_per_example_and_chunked(x64, attack):
  key = jax.random.key(6)
  shape = (3, 5, 5, 1)
  fn = smooth_model(key, shape[1:], dtype=jnp.float64)
  x = images(jax.random.fold_in(key, 1), shape, jnp.float64)
  t = jnp.argmax(fn(x), -1)
  if attack == "manipulation":
    cfg = attacks.ManipulationConfig(num_steps=4, learning_rate=0.01, epsilon=0.1)
    tmap = jax.random.uniform(jax.random.fold_in(key, 2), (3, 5, 5), jnp.float64)
    run = lambda xb, tb, mb, bs=None: attacks.manipulation_attack(
        fn, gradient, xb, tb, target_map=mb, config=cfg, key=key, chunk_size=bs)
  else:
    cfg = attacks.AttackConfig(num_steps=4, k=4, epsilon=0.1, step_size=0.02)
    tmap = jnp.broadcast_to(jnp.eye(5), (3, 5, 5))
    run = lambda xb, tb, mb, bs=None: run_attack(attack, fn, xb, tb, cfg, key=key, mask=mb,
                                                 chunk_size=bs)
  full = run(x, t, tmap)
  chunked = run(x, t, tmap, 2)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(chunked)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  for i in range(3):
    one = run(x[i:i + 1], t[i:i + 1], tmap[i:i + 1])
    np.testing.assert_allclose(one.x_adv[0], full.x_adv[i], atol=1e-12)
    np.testing.assert_allclose(one.objective_history[0], full.objective_history[i],
                               rtol=1e-10)


def test_epsilon_sweep_does_not_recompile():
  key = jax.random.key(7)
  fn = smooth_model(key, (4, 4, 1))
  x = images(jax.random.fold_in(key, 1), (2, 4, 4, 1))
  t = jnp.argmax(fn(x), -1)
  base = attacks.AttackConfig(num_steps=3, k=3)
  attacks.topk_attack(fn, gradient, x, t, config=base, key=key)
  before = _ghorbani._signed_attack._cache_size()
  for eps in (0.0, 1 / 255, 2 / 255, 4 / 255, 16 / 255):
    cfg = base.replace(epsilon=eps, step_size=eps / 4 + 1e-3)
    attacks.topk_attack(fn, gradient, x, t, config=cfg, key=key)
  assert _ghorbani._signed_attack._cache_size() == before

  # The same under a user's outer jit: one trace for the whole sweep.
  @jax.jit
  @chex.assert_max_traces(n=1)
  def attack_at(eps):
    return attacks.topk_attack(fn, gradient, x, t, config=base.replace(epsilon=eps),
                               key=key).objective

  for eps in (1 / 255, 2 / 255, 8 / 255):
    attack_at(jnp.float32(eps))


def test_new_weights_of_the_same_architecture_reuse_the_compiled_attack():
  """Weights are traced, not baked in: attacking another checkpoint does not recompile."""
  x = jax.random.uniform(jax.random.key(3), (2, 8))
  cfg = attacks.AttackConfig(num_steps=3, k=3, epsilon=0.05, step_size=0.01)
  fns = [models.as_fn(models.create_model("mlp", input_shape=(8,), num_classes=3, seed=s))
         for s in (0, 1, 2)]
  surs = [models.surrogate_fn(models.create_model("mlp", input_shape=(8,), num_classes=3,
                                                  seed=s), beta=10.0) for s in (0, 1, 2)]
  outs = [attacks.topk_attack(fns[0], gradient, x, 0, config=cfg, key=jax.random.key(0),
                              surrogate=surs[0])]
  before = _ghorbani._signed_attack._cache_size()
  for f, s in zip(fns[1:], surs[1:]):
    outs.append(attacks.topk_attack(f, gradient, x, 0, config=cfg, key=jax.random.key(0), surrogate=s))
  assert _ghorbani._signed_attack._cache_size() == before
  # ... and the results are those of the new weights
  assert not np.allclose(outs[0].objective_history, outs[1].objective_history)


def test_beta_schedule_is_traced_and_family_matches_surrogate():
  model = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=1)
  fam = attacks.softplus_family(model)
  x = images(jax.random.key(0), (2, 28, 28, 1))
  np.testing.assert_allclose(fam(x, 7.0), models.surrogate_fn(model, beta=7.0)(x),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(attacks.beta_schedule(10.0, 100.0, 3), [10, 10 ** 1.5, 100],
                             rtol=1e-5)
  fn = smooth_model(jax.random.key(1), (4, 4, 1))
  family = lambda z, beta: fn(z) * (1.0 + 0.01 * beta)  # any smooth family works
  xs = images(jax.random.key(2), (2, 4, 4, 1))
  t = jnp.argmax(fn(xs), -1)
  tmap = jnp.ones((4, 4))
  base = attacks.ManipulationConfig(num_steps=3, learning_rate=0.01, epsilon=0.05)
  attacks.manipulation_attack(fn, gradient, xs, t, target_map=tmap, config=base, key=jax.random.key(0),
                              surrogate_family=family)
  before = _dombrowski._manipulation._cache_size()
  for b0, b1, eps in ((1.0, 5.0, 0.1), (3.0, 30.0, float("inf"))):
    cfg = base.replace(beta_start=b0, beta_end=b1, epsilon=eps)
    attacks.manipulation_attack(fn, gradient, xs, t, target_map=tmap, config=cfg, key=jax.random.key(0),
                                surrogate_family=family)
  assert _dombrowski._manipulation._cache_size() == before


def test_manipulation_attack_reduces_loss_and_respects_ball():
  key = jax.random.key(8)
  fn = smooth_model(key, (6, 6, 1))
  x = images(jax.random.fold_in(key, 1), (3, 6, 6, 1))
  t = jnp.argmax(fn(x), -1)
  tmap = attacks.frame_map(6, 6, frame_width=1)
  cfg = attacks.ManipulationConfig(num_steps=60, learning_rate=3e-3, epsilon=0.05, gamma=1.0)
  r = attacks.manipulation_attack(fn, gradient, x, t, target_map=tmap, config=cfg, key=key)
  assert bool(jnp.all(r.objective > r.initial_objective))
  assert float(jnp.max(jnp.abs(r.x_adv - x))) <= 0.05 + 1e-6
  np.testing.assert_array_equal(jnp.argmax(fn(r.x_adv), -1), t)


def test_frame_map():
  f = attacks.frame_map(6, 7, frame_width=2)
  assert f.shape == (6, 7)
  np.testing.assert_array_equal(f[2:4, 2:5], 0)
  assert float(f.sum()) == 6 * 7 - 2 * 3
  assert int(attacks.frame_map(28, 28).sum()) == 28 * 28 - 20 * 20  # 4-px default frame
  with pytest.raises(ValueError, match="frame_width"):
    attacks.frame_map(6, 6, frame_width=3)
  cfg = attacks.frame_config(epsilon=4 / 255, num_steps=100)
  np.testing.assert_allclose(cfg.learning_rate, 4 * (4 / 255) / 100)


def test_integrated_gradients_and_smoothgrad_explainers():
  key = jax.random.key(9)
  fn = smooth_model(key, (5, 5, 1))
  x = images(jax.random.fold_in(key, 1), (2, 5, 5, 1))
  t = jnp.argmax(fn(x), -1)
  cfg = attacks.AttackConfig(num_steps=5, k=5, epsilon=0.05, step_size=0.01)
  ig = explainers.get("integrated_gradients", num_steps=8, chunk_size=3)
  r = attacks.topk_attack(fn, ig, x, t, config=cfg, key=key)
  assert bool(jnp.all(r.objective >= r.initial_objective))
  # A stochastic explainer gets a fresh key each step; the attack stays reproducible.
  sg = explainers.get("smoothgrad", num_samples=4)
  r1 = attacks.topk_attack(fn, sg, x, t, config=cfg, key=key)
  r2 = attacks.topk_attack(fn, sg, x, t, config=cfg, key=key)
  np.testing.assert_array_equal(r1.x_adv, r2.x_adv)
  r3 = attacks.topk_attack(fn, sg, x, t, config=cfg, key=jax.random.key(1))
  assert not np.array_equal(r1.objective_history, r3.objective_history)


# -------------------------------------------------------------- bad input ----
def test_bad_input_errors():
  key = jax.random.key(0)
  fn = smooth_model(key, (4, 4, 1))
  x = images(key, (2, 4, 4, 1))
  t = jnp.argmax(fn(x), -1)
  cfg = attacks.AttackConfig(num_steps=2, k=3)
  with pytest.raises(ValueError, match="epsilon"):
    attacks.topk_attack(fn, gradient, x, t, config=cfg.replace(epsilon=-0.1), key=key)
  with pytest.raises(ValueError, match="step_size"):
    attacks.topk_attack(fn, gradient, x, t, config=cfg.replace(step_size=0.0), key=key)
  with pytest.raises(ValueError, match="`k`"):
    attacks.topk_attack(fn, gradient, x, t, config=cfg.replace(k=17), key=key)
  with pytest.raises(ValueError, match="mask"):
    attacks.targeted_attack(fn, gradient, x, t, mask=jnp.ones((3, 4)), config=cfg, key=key)
  with pytest.raises(ValueError, match="explain"):
    attacks.topk_attack(fn, lambda f, z, tt, *, key: gradient(f, z, tt)[..., 0], x, t,
                        config=cfg, key=key)
  with pytest.raises(ValueError, match="surrogate"):
    attacks.topk_attack(fn, gradient, x, t, config=cfg, key=key,
                        surrogate=lambda z: jnp.concatenate([fn(z), fn(z)], -1))
  with pytest.raises(ValueError, match="input_range"):
    attacks.topk_attack(fn, gradient, x + 2.0, t, config=cfg, key=key)
  with pytest.raises(ValueError, match="key"):
    attacks.topk_attack(fn, gradient, x, t, config=cfg, key=None)
  with pytest.raises(ValueError, match="config"):
    attacks.topk_attack(fn, gradient, x, t, config=attacks.ManipulationConfig(), key=key)
  with pytest.raises(ValueError, match="target_map"):
    attacks.manipulation_attack(fn, gradient, x, t, target_map=jnp.ones((5, 4)), key=key)
  with pytest.raises(ValueError, match="learning_rate"):
    attacks.manipulation_attack(fn, gradient, x, t, target_map=jnp.ones((4, 4)),
                                config=attacks.ManipulationConfig(learning_rate=-1.0), key=key)
  with pytest.raises(ValueError, match="centre-of-mass"):
    attacks.mass_center_attack(fn, gradient, x.reshape(2, 16), t, config=cfg, key=key)
