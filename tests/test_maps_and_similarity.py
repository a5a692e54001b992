"""Saliency-map post-processing and map-similarity metrics against numpy/scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rattr_jax import maps, metrics

RNG = np.random.default_rng(0)


def test_reductions_match_numpy():
  a = RNG.normal(size=(2, 5, 6, 3)).astype(np.float32)
  np.testing.assert_allclose(maps.saliency_map(a, normalize="none"), np.abs(a).sum(-1),
                             rtol=1e-6)
  np.testing.assert_allclose(maps.saliency_map(a, reduce="sum", normalize="none"), a.sum(-1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps.saliency_map(a, reduce="max_abs", normalize="none"),
                             np.abs(a).max(-1), rtol=1e-6)
  tab = RNG.normal(size=(3, 7)).astype(np.float32)
  np.testing.assert_allclose(maps.saliency_map(tab, normalize="none"), np.abs(tab))


def test_normalizations():
  a = np.abs(RNG.normal(size=(2, 5, 6, 3))).astype(np.float32)
  s1 = maps.saliency_map(a, normalize="sum_to_one")
  np.testing.assert_allclose(s1.sum((1, 2)), 1.0, rtol=1e-5)
  shw = maps.saliency_map(a, normalize="sum_to_hw")
  np.testing.assert_allclose(shw.sum((1, 2)), 30.0, rtol=1e-5)
  smax = maps.saliency_map(a, normalize="max")
  np.testing.assert_allclose(smax.max((1, 2)), 1.0, rtol=1e-6)
  w = np.asarray(maps.saliency_map(a, reduce="max_abs", normalize="winsorize", percentile=90))
  m = np.abs(a).max(-1)
  for i in range(2):
    hi = np.percentile(m[i], 90)
    c = np.minimum(m[i], hi)
    np.testing.assert_allclose(w[i], (c - c.min()) / (hi - c.min()), rtol=1e-5, atol=1e-6)
  assert w.min() >= 0 and w.max() <= 1 + 1e-6


@pytest.mark.parametrize("kwargs,match", [
    ({"reduce": "mean"}, "`reduce`"), ({"normalize": "zscore"}, "`normalize`"),
    ({"percentile": 101}, "`percentile`")])
def test_map_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    maps.saliency_map(np.ones((1, 4, 4, 1), np.float32), **kwargs)


# ------------------------------------------------------------ similarities --
def test_spearman_matches_scipy_random_and_ties():
  a = RNG.normal(size=(4, 8, 8)).astype(np.float32)
  b = (a + RNG.normal(size=a.shape)).astype(np.float32)
  ties_a = RNG.integers(0, 4, size=(4, 8, 8)).astype(np.float32)
  ties_b = RNG.integers(0, 3, size=(4, 8, 8)).astype(np.float32)
  for u, v in ((a, b), (ties_a, ties_b), (ties_a, b)):
    ours = np.asarray(metrics.spearman(u, v))
    ref = [scipy.stats.spearmanr(u[i].ravel(), v[i].ravel()).statistic for i in range(4)]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_kendall_matches_scipy_random_and_ties():
  a = RNG.normal(size=(3, 6, 7)).astype(np.float32)
  b = (a + RNG.normal(size=a.shape)).astype(np.float32)
  ties_a = RNG.integers(0, 4, size=(3, 6, 7)).astype(np.float32)
  ties_b = RNG.integers(0, 3, size=(3, 6, 7)).astype(np.float32)
  for u, v in ((a, b), (ties_a, ties_b)):
    ours = np.asarray(metrics.kendall_tau(u, v))
    ref = [scipy.stats.kendalltau(u[i].ravel(), v[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_rank_invariances():
  a = jnp.asarray(RNG.random((3, 10, 10)), jnp.float32)
  np.testing.assert_allclose(metrics.spearman(a, jnp.exp(3 * a) + 2), 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics.spearman(a, -a), -1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics.topk_intersection(a, a, 17), 1.0)
  np.testing.assert_allclose(metrics.topk_intersection(a, 5 * a ** 3, 17), 1.0)
  np.testing.assert_allclose(metrics.ssim(a, a), 1.0, rtol=1e-5)
  np.testing.assert_allclose(metrics.ssim(a, 4 * a + 1), 1.0, rtol=1e-4)
  b = jnp.asarray(RNG.random((3, 10, 10)), jnp.float32)
  assert np.all(np.asarray(metrics.ssim(a, b)) < 0.5)


def test_topk_matches_sets():
  a = RNG.random((5, 30)).astype(np.float32)
  b = RNG.random((5, 30)).astype(np.float32)
  ours = np.asarray(metrics.topk_intersection(a, b, 7))
  for i in range(5):
    sa = set(np.argsort(-a[i])[:7])
    sb = set(np.argsort(-b[i])[:7])
    assert ours[i] == pytest.approx(len(sa & sb) / 7)


def test_value_metrics_match_numpy():
  a = RNG.normal(size=(3, 20)).astype(np.float32)
  b = RNG.normal(size=(3, 20)).astype(np.float32)
  np.testing.assert_allclose(metrics.pearson(a, b),
                             [np.corrcoef(a[i], b[i])[0, 1] for i in range(3)], rtol=1e-4)
  cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  np.testing.assert_allclose(metrics.cosine_similarity(a, b), cos, rtol=1e-5)
  np.testing.assert_allclose(metrics.mse(a, b), ((a - b) ** 2).mean(1), rtol=1e-5)


def test_center_of_mass_closed_form():
  m = np.zeros((2, 9, 11), np.float32)
  m[0, 2, 7] = 1.0
  m[1, 1, 1] = m[1, 5, 9] = 1.0
  np.testing.assert_allclose(metrics.center_of_mass(m), [[2, 7], [3, 5]], atol=1e-5)
  m2 = np.zeros_like(m)
  m2[0, 5, 3] = 1.0
  m2[1, 3, 5] = 1.0
  np.testing.assert_allclose(metrics.center_shift(m, m2), [5.0, 0.0], atol=1e-5)


def test_metrics_jit_equals_eager_and_batched():
  a = jnp.asarray(RNG.random((4, 9, 9)), jnp.float32)
  b = jnp.asarray(RNG.random((4, 9, 9)), jnp.float32)
  for f in (metrics.spearman, metrics.kendall_tau, metrics.ssim, metrics.pearson,
            metrics.center_shift, lambda u, v: metrics.topk_intersection(u, v, 10)):
    eager = f(a, b)
    np.testing.assert_allclose(jax.jit(f)(a, b), eager, rtol=1e-5, atol=1e-6)
    per = np.concatenate([f(a[i:i + 1], b[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(per, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda a: metrics.topk_intersection(a, a, 1000), "`k`"),
    (lambda a: metrics.topk_intersection(a, a, 0), "`k`"),
    (lambda a: metrics.spearman(a, a[:, :5]), "same shape"),
    (lambda a: metrics.ssim(a[:, :5, :5], a[:, :5, :5]), "7x7"),
    (lambda a: metrics.center_shift(a[:, 0], a[:, 0]), "`a`"),
])
def test_metric_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.ones((2, 8, 8)))
