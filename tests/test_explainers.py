"""The explainer protocol: every method is `explainer(fn, x, target, *, key)`; names; precomputed."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import attacks, attribution, explainers, metrics, testing
from rattr_jax.attacks import _ghorbani

KEY = jax.random.key(0)
MLP = testing.TanhMLP(jax.random.key(1), 6, 8, 3)
X = jax.random.uniform(jax.random.key(2), (3, 6), minval=0.1, maxval=0.9)
T = jnp.array([0, 1, 2])


@pytest.mark.parametrize("name", [n for n in explainers.NAMES if n != "decoy"])
def test_every_method_is_an_explainer(name):
  method = getattr(attribution, name)
  params = inspect.signature(method).parameters
  assert list(params)[:3] == ["fn", "x", "target"]
  assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY
  # Everything after target is keyword-only.
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[3:])
  e = explainers.get(name)
  assert isinstance(e, explainers.Explainer)
  np.testing.assert_array_equal(e(MLP, X, T, key=KEY), method(MLP, X, T, key=KEY))
  if name not in explainers.STOCHASTIC:  # deterministic methods ignore the key
    np.testing.assert_array_equal(e(MLP, X, T, key=None), e(MLP, X, T, key=jax.random.key(9)))
  else:
    with pytest.raises(ValueError, match="key"):
      e(MLP, X, T, key=None)


def test_get_binds_settings_and_is_hashable():
  a = explainers.get("integrated_gradients", num_steps=7, chunk_size=3)
  b = explainers.get("integrated_gradients", chunk_size=3, num_steps=7)
  assert a == b and hash(a) == hash(b) and len({a, b}) == 1
  assert a != explainers.get("integrated_gradients", num_steps=8, chunk_size=3)
  np.testing.assert_allclose(a(MLP, X, T, key=None),
                             attribution.integrated_gradients(MLP, X, T, num_steps=7,
                                                              chunk_size=3))
  # Array settings are pytree leaves (traced), static ones part of the tree structure.
  base = jnp.full((6,), 0.5)
  c = explainers.get("integrated_gradients", num_steps=7, baseline=base)
  leaves, tree = jax.tree_util.tree_flatten(c)
  assert len(leaves) == 1 and leaves[0] is base
  d = jax.tree_util.tree_unflatten(tree, [base + 0.1])
  np.testing.assert_allclose(d(MLP, X, T, key=None), attribution.integrated_gradients(
      MLP, X, T, num_steps=7, baseline=base + 0.1), rtol=1e-6)


def test_unknown_name_or_setting_lists_valid_ones():
  with pytest.raises(ValueError, match="gradient.*smoothgrad"):
    explainers.get("lrp")
  with pytest.raises(ValueError, match="num_samples"):
    explainers.get("smoothgrad", n_samples=3)
  with pytest.raises(ValueError, match="key"):
    explainers.get("smoothgrad", key=KEY)


def test_equal_explainers_reuse_the_compiled_attack():
  cfg = attacks.AttackConfig(num_steps=2, k=2, epsilon=0.05, step_size=0.01)
  attacks.topk_attack(MLP, explainers.get("smoothgrad", num_samples=3), X, T, key=KEY, config=cfg)
  n = _ghorbani._signed_attack._cache_size()
  attacks.topk_attack(MLP, explainers.get("smoothgrad", num_samples=3), X, T, key=KEY, config=cfg)
  assert _ghorbani._signed_attack._cache_size() == n


def test_precomputed_maps_score_like_the_explainer_that_made_them():
  g = attribution.gradient(MLP, X, T)
  pre = explainers.precomputed(g)
  np.testing.assert_array_equal(pre(MLP, X, T, key=None), g)
  for metric in (metrics.insertion, metrics.deletion):
    np.testing.assert_allclose(metric(MLP, pre, X, T, num_steps=3).curve,
                               metric(MLP, attribution.gradient, X, T, num_steps=3).curve)
  np.testing.assert_allclose(metrics.infidelity(MLP, pre, X, T, key=KEY),
                             metrics.infidelity(MLP, attribution.gradient, X, T, key=KEY),
                             rtol=1e-6)
  # Different inputs: it cannot explain them (it does not recompute).
  with pytest.raises(ValueError, match="shape"):
    pre(MLP, X[:2], T[:2], key=None)
  # Metrics and attacks that explain perturbed inputs reject it.
  with pytest.raises(ValueError, match="precomputed"):
    metrics.avg_sensitivity(MLP, pre, X, T, key=KEY)
  with pytest.raises(ValueError, match="precomputed"):
    attacks.topk_attack(MLP, pre, X, T, key=KEY)


def test_same_position_everywhere():
  """Attacks, metrics and curvature diagnostics take (fn, explainer, x, target, *, ...)."""
  from rattr_jax import curvature
  funcs = [attacks.random_sign_attack, attacks.topk_attack, attacks.mass_center_attack,
           attacks.targeted_attack, attacks.manipulation_attack, attacks.frame_attack,
           metrics.max_sensitivity, metrics.avg_sensitivity, metrics.local_lipschitz_estimate,
           metrics.relative_input_stability, metrics.relative_output_stability,
           metrics.relative_representation_stability, metrics.infidelity,
           metrics.faithfulness_estimate, metrics.insertion, metrics.deletion,
           metrics.adversarial_insertion, metrics.random_perturbation_similarity,
           metrics.attack_similarity, curvature.explanation_sensitivity]
  for f in funcs:
    params = list(inspect.signature(f).parameters.values())
    assert [p.name for p in params[:4]] == ["fn", "explainer", "x", "target"], f.__name__
    # Data arrays shaped like x (x_adv, directions v) may follow target; options may not.
    data = {"x_adv", "v"}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[4:]
               if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in data), f.__name__
    assert "key" in [p.name for p in params[4:]], f.__name__
    assert "batch_size" not in [p.name for p in params], f.__name__
