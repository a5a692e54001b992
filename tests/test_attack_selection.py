"""``select_on="measure"``: Ghorbani's rule keeps the iterate that scores best on the attacked measure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import attacks, explainers, maps, metrics, models


@pytest.fixture(scope="module")
def setup(trained_cnn):
  model, data = trained_cnn
  fn = models.as_fn(model)
  sur = models.surrogate_fn(model, beta=10.0)
  x = jnp.asarray(data.x_test[:16])
  y = jnp.asarray(data.y_test[:16])
  return fn, sur, x, y


def _intersection(fn, ex, x, x_adv, y, k):
  m0 = maps.saliency_map(ex(fn, x, y, key=None))
  m1 = maps.saliency_map(ex(fn, x_adv, y, key=None))
  return np.asarray(metrics.topk_intersection(m0, m1, k=k))


def test_measure_selection_is_never_weaker_on_the_topk_intersection(setup):
  fn, sur, x, y = setup
  ex = explainers.get("gradient")
  k = 78
  out = {}
  for rule in ("surrogate", "model", "measure"):
    cfg = attacks.AttackConfig(epsilon=0.1, step_size=0.01, num_steps=15, k=k, select_on=rule)
    res = attacks.topk_attack(fn, ex, x, y, key=jax.random.key(0), config=cfg, surrogate=sur)
    # label kept on the real model and inside the epsilon-ball and the valid box
    np.testing.assert_array_equal(np.argmax(fn(res.x_adv), -1), np.argmax(fn(x), -1))
    assert float(jnp.max(jnp.abs(res.x_adv - x))) <= 0.1 + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    out[rule] = (_intersection(fn, ex, x, res.x_adv, y, k), res)
  inter_measure, res_m = out["measure"]
  # all rules walk the same iterates; "measure" keeps the one with the lowest intersection
  for rule in ("surrogate", "model"):
    assert np.all(inter_measure <= out[rule][0] + 1e-7), rule
  # and it is strictly stronger somewhere on these images (it is the rule that matters)
  assert inter_measure.mean() < out["model"][0].mean()
  # the reported objective is minus that intersection
  np.testing.assert_allclose(-np.asarray(res_m.objective), inter_measure, atol=1e-6)


def test_measure_equals_model_rule_for_objective_measures(setup):
  fn, sur, x, y = setup
  ex = explainers.get("gradient")
  res = {}
  for rule in ("model", "measure"):
    cfg = attacks.AttackConfig(epsilon=0.1, step_size=0.01, num_steps=5, select_on=rule)
    res[rule] = attacks.mass_center_attack(fn, ex, x, y, key=jax.random.key(1), config=cfg,
                                           surrogate=sur)
  np.testing.assert_array_equal(np.asarray(res["model"].x_adv), np.asarray(res["measure"].x_adv))


def test_unknown_rule_is_an_error(setup):
  fn, sur, x, y = setup
  with pytest.raises(ValueError, match="select_on"):
    attacks.topk_attack(fn, explainers.get("gradient"), x, y, key=jax.random.key(0),
                        config=attacks.AttackConfig(select_on="best"), surrogate=sur)
