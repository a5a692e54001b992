"""Last-layer influence functions and the influence attack."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import influence as I
from rattr_jax import models
from rattr_jax.influence import _influence as IF


def _problem(key, n=40, d=3, c=3, dtype=jnp.float64):
  k1, k2, k3 = jax.random.split(key, 3)
  phi = jax.random.normal(k1, (n, d), dtype)
  y = jax.random.randint(k2, (n,), 0, c)
  return phi, y, k3


def _reg_objective(theta, phi, y, lam, weights):
  logits = IF._augment(phi) @ theta
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)[:, 0]
  return jnp.sum(weights * ce) / phi.shape[0] + 0.5 * lam * jnp.sum(theta ** 2)


def _newton_fit(theta, phi, y, lam, weights, iters=30):
  shape = theta.shape
  f = lambda v: _reg_objective(v.reshape(shape), phi, y, lam, weights)
  v = theta.reshape(-1)
  for _ in range(iters):
    v = v - jnp.linalg.solve(jax.hessian(f)(v), jax.grad(f)(v))
  return v.reshape(shape)


def test_hessian_matches_autodiff(x64):
  phi, y, key = _problem(jax.random.key(0))
  w = jax.random.normal(key, (4, 3), jnp.float64)
  f = lambda v: _reg_objective(v.reshape(4, 3), phi, y, 0.0, jnp.ones(40))
  np.testing.assert_allclose(IF.hessian_from_features(w, phi), jax.hessian(f)(w.reshape(-1)),
                             rtol=1e-10, atol=1e-12)
  g = jax.vmap(lambda p, t: jax.grad(lambda v: _reg_objective(
      v.reshape(4, 3), p[None], t[None], 0.0, jnp.ones(1)))(w.reshape(-1)))(phi, y)
  np.testing.assert_allclose(IF.per_example_gradients(w, phi, y), g, rtol=1e-10, atol=1e-12)


def test_influence_predicts_upweighting_retrain(x64):
  """Koh & Liang: I(z_j, z_t) = d L(z_t, theta_eps) / d eps for up-weighting z_j by eps."""
  phi, y, key = _problem(jax.random.key(1))
  lam = 0.05
  theta = _newton_fit(jnp.zeros((4, 3), jnp.float64), phi, y, lam, jnp.ones(40))
  last = I.LastLayer(lambda z: z, theta[:-1], theta[-1])
  state = I.fit_influence(last, phi, y, damping=lam, chunk_size=None)
  x_t = jax.random.normal(key, (2, 3), jnp.float64)
  t = jnp.array([0, 2])
  scores = I.influence(state, x_t, t)
  assert scores.shape == (2, 40)

  def test_loss(th):
    logits = IF._augment(x_t) @ th
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], 1)[:, 0]

  eps = 1e-4
  for j in (0, 7, 23):
    # Up-weighting z_j by eps adds eps * L(z_j) to the (1/N-averaged) objective.
    e = jnp.zeros(40).at[j].set(eps * 40)
    plus = _newton_fit(theta, phi, y, lam, 1.0 + e, iters=8)
    minus = _newton_fit(theta, phi, y, lam, 1.0 - e, iters=8)
    fd = (test_loss(plus) - test_loss(minus)) / (2 * eps)
    np.testing.assert_allclose(scores[:, j], fd, rtol=1e-5, atol=1e-8)


def test_last_layer_split_matches_model():
  model = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=2)
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
  last = I.last_layer(model)
  assert last.features_fn(x).shape == (3, 64)
  np.testing.assert_allclose(last.logits(x), models.as_fn(model)(x), rtol=1e-5, atol=1e-5)
  mlp = models.create_model("mlp", input_shape=(8,), num_classes=3, seed=0)
  xm = jax.random.normal(jax.random.key(1), (4, 8))
  np.testing.assert_allclose(I.last_layer(mlp).logits(xm), models.as_fn(mlp)(xm), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="name"):
    I.last_layer(model, name="conv1")


@pytest.fixture(scope="module")
def cnn_influence(trained_cnn):
  model, data = trained_cnn
  last = I.last_layer(model)
  state = I.fit_influence(last, data.x_train[:1000], data.y_train[:1000], damping=0.01)
  return state, data


@pytest.mark.slow
def test_influence_attack_changes_top_training_points(cnn_influence):
  state, data = cnn_influence
  x = jnp.asarray(data.x_test[:8])
  label = jnp.argmax(state.logits(x), -1)
  cfg = I.influence_attack_config(num_steps=10, step_size=2 / 255)
  r = I.influence_attack(state, x, label, config=cfg, key=jax.random.key(0))
  assert float(jnp.max(jnp.abs(r.attack.x_adv - x))) <= 8 / 255 + 1e-6
  np.testing.assert_array_equal(jnp.argmax(state.logits(r.attack.x_adv), -1), label)
  np.testing.assert_allclose(r.scores_before, I.influence(state, x, label), rtol=1e-3,
                             atol=2e-5)
  ov = np.asarray(r.topk_overlap)
  assert np.all(ov[~np.asarray(r.attack.success)] == 1.0)
  assert float(ov.mean()) < 0.9, ov  # measured about 0.75
  assert bool(jnp.all(r.attack.objective >= r.attack.initial_objective))
  top = I.top_influential(r.scores_before, 5)
  assert top.shape == (8, 5)


def test_bad_input_errors(cnn_influence):
  state, data = cnn_influence
  last = I.LastLayer(lambda z: z, jnp.ones((3, 2)), jnp.zeros(2))
  phi = jnp.ones((5, 3))
  with pytest.raises(ValueError, match="damping"):
    I.fit_influence(last, phi, jnp.zeros(5, jnp.int32), damping=0.0)
  with pytest.raises(ValueError, match="y_train"):
    I.fit_influence(last, phi, jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="y_train"):
    I.fit_influence(last, phi, jnp.full(5, 7))
  x = jnp.asarray(data.x_test[:2])
  with pytest.raises(ValueError, match="`k`"):
    I.influence_attack(state, x, 0, config=I.influence_attack_config(k=5000),
                       key=jax.random.key(0))
  with pytest.raises(ValueError, match="epsilon"):
    I.influence_attack(state, x, 0, config=I.influence_attack_config(epsilon=-1.0),
                       key=jax.random.key(0))
