"""Robustness and stability metrics: closed forms, numpy references, contracts, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import attribution, metrics, testing
from rattr_jax.explainers import precomputed as metrics_precomputed
from rattr_jax.metrics import _common as C
from rattr_jax.metrics import _lipschitz, _robustness

KEY = jax.random.key(0)
LIN = testing.linear_model(jax.random.key(1), 12, 3)
QUAD = testing.quadratic_model(jax.random.key(2), 10, 2)
X12 = jax.random.normal(jax.random.key(3), (4, 12))
X10 = jax.random.normal(jax.random.key(4), (3, 10))
G_LIN = functools.partial(attribution.gradient, LIN)
IXG_LIN = functools.partial(attribution.input_x_gradient, LIN)
G_QUAD = functools.partial(attribution.gradient, QUAD)
GRAD = attribution.gradient


MLP = testing.TanhMLP(jax.random.key(5), 10, 16, 3)
G_MLP = functools.partial(attribution.gradient, MLP)


def deltas(key, batch, num_samples, feat, epsilon, noise="uniform", norm="linf"):
  """The exact perturbations a metric draws for ``key`` (numpy ``[S, B, *F]``)."""
  keys = C.example_keys(key, batch)
  return np.asarray(C.sample_noise(keys, jnp.arange(num_samples), feat, jnp.float32,
                                   jnp.float32(epsilon), noise, norm))


def np_explain(explain_fn, x, t):
  return np.asarray(explain_fn(jnp.asarray(x, jnp.float32), jnp.asarray(t)))


# ------------------------------------------------------------ closed forms ----
def test_linear_gradient_has_zero_sensitivity():
  np.testing.assert_array_equal(metrics.max_sensitivity(LIN, GRAD, X12, 1, key=KEY), np.zeros(4))


def test_linear_gradient_has_zero_local_lipschitz():
  v = metrics.local_lipschitz_estimate(LIN, GRAD, X12, 2, key=KEY, num_steps=5)
  np.testing.assert_array_equal(v, np.zeros(4))


def test_quadratic_lipschitz_reaches_spectral_norm():
  """Logit 0.5 x^T A x + b^T x: the gradient Ax + b has local Lipschitz constant ||A||_2."""
  norm_a = np.linalg.norm(np.asarray(QUAD.A[0]), 2)
  asc = metrics.local_lipschitz_estimate(QUAD, GRAD, X10, 0, key=KEY, num_steps=20, num_restarts=2)
  smp = metrics.local_lipschitz_estimate(QUAD, GRAD, X10, 0, key=KEY, method="sampling",
                                         num_samples=200)
  asc, smp = np.asarray(asc), np.asarray(smp)
  assert np.all(asc <= norm_a * (1 + 1e-4))
  assert np.all(asc >= 0.98 * norm_a), (asc, norm_a)
  # Same key, 200 random points against 2 x 21 ascent iterates: ascent is higher.
  assert np.all(asc > smp), (asc, smp)
  assert np.all(smp < 0.95 * norm_a)


def test_quadratic_lipschitz_linf_ball_beats_sampling():
  norm_a = np.linalg.norm(np.asarray(QUAD.A[0]), 2)
  kw = dict(key=KEY, norm="linf", epsilon=0.1)
  asc = np.asarray(metrics.local_lipschitz_estimate(QUAD, GRAD, X10, 0, num_steps=20, **kw))
  smp = np.asarray(metrics.local_lipschitz_estimate(QUAD, GRAD, X10, 0, method="sampling",
                                                    num_samples=40, **kw))
  assert np.all(asc > smp) and np.all(asc <= norm_a * (1 + 1e-4))


def test_sensitivity_matches_numpy_reference():
  s, eps = 6, 0.3  # the configuration of CASES["max_sensitivity"]: no new compilation
  d = deltas(KEY, 3, s, (10,), eps)
  x, t = np.asarray(X10), np.array([0, 1, 2])
  phi = np_explain(G_MLP, x, t)
  ratios = np.stack([np.linalg.norm(np_explain(G_MLP, x + d[i], t) - phi, axis=1)
                     for i in range(s)]) / np.linalg.norm(phi, axis=1)
  mx = metrics.max_sensitivity(MLP, GRAD, X10, t, key=KEY, num_samples=s, epsilon=eps)
  av = metrics.avg_sensitivity(MLP, GRAD, X10, t, key=KEY, num_samples=s, epsilon=eps)
  np.testing.assert_allclose(mx, ratios.max(0), rtol=1e-5)
  np.testing.assert_allclose(av, ratios.mean(0), rtol=1e-5)


def test_sensitivity_of_zero_explanation_is_zero():
  zero = lambda f, x, t, *, key: jnp.zeros_like(x)  # noqa: E731
  np.testing.assert_array_equal(metrics.max_sensitivity(LIN, zero, X12, 0, key=KEY), np.zeros(4))


def test_lipschitz_sampling_matches_numpy_reference_gaussian():
  s, eps = 5, 0.1
  d = deltas(KEY, 3, s, (10,), eps, noise="gaussian")
  x, t = np.asarray(X10), 1
  phi = np_explain(G_MLP, x, t)
  ref = np.stack([np.linalg.norm(np_explain(G_MLP, x + d[i], t) - phi, axis=1)
                  / (np.linalg.norm(d[i], axis=1) + 1e-10) for i in range(s)]).max(0)
  v = metrics.local_lipschitz_estimate(MLP, GRAD, X10, t, key=KEY, method="sampling",
                                       num_samples=s, noise="gaussian", epsilon=eps)
  np.testing.assert_allclose(v, ref, rtol=1e-5)


def test_senn_variant_with_identity_concepts_equals_plain_estimate():
  theta = lambda z: G_QUAD(z, jnp.zeros(z.shape[0], jnp.int32))  # noqa: E731
  kw = dict(key=KEY, num_steps=20, num_restarts=2)  # as the spectral-norm test
  senn = metrics.senn_local_lipschitz_estimate(theta, lambda z: z, X10, **kw)
  plain = metrics.local_lipschitz_estimate(QUAD, GRAD, X10, 0, **kw)
  np.testing.assert_allclose(senn, plain, rtol=1e-5)
  # Concepts h = 2 x halve every ratio (sampling: the same points as the plain estimate).
  kw = dict(key=KEY, method="sampling", num_samples=200)  # as the spectral-norm test
  two = metrics.senn_local_lipschitz_estimate(theta, lambda z: 2 * z, X10, **kw)
  one = metrics.local_lipschitz_estimate(QUAD, GRAD, X10, 0, **kw)
  np.testing.assert_allclose(two, one / 2, rtol=1e-5)


def test_senn_variant_on_senn_like_model():
  """theta(x) [B, k, C] relevances and h(x) [B, k] concepts of a tiny SENN-like model."""
  w_t = jax.random.normal(jax.random.key(7), (10, 4 * 3))
  w_h = jax.random.normal(jax.random.key(8), (10, 4))
  theta = lambda z: jnp.tanh(z @ w_t).reshape(z.shape[0], 4, 3)  # noqa: E731
  h = lambda z: z @ w_h  # noqa: E731
  v = np.asarray(metrics.senn_local_lipschitz_estimate(theta, h, X10, key=KEY, num_steps=5))
  # Lower bound check: a few random points never beat the sup, each ratio is <= v's sup
  # only in expectation, so check positivity and finiteness plus one explicit ratio.
  assert v.shape == (3,) and np.all(np.isfinite(v)) and np.all(v > 0)
  d = 1e-3 * np.ones((3, 10), np.float32)
  x = np.asarray(X10)
  r = (np.linalg.norm((np.asarray(theta(x + d)) - np.asarray(theta(x))).reshape(3, -1), axis=1)
       / np.linalg.norm(np.asarray(h(x + d)) - np.asarray(h(x)), axis=1))
  assert np.all(r < 20 * v)  # a tiny step is of the same order as the estimate


# ------------------------------------------------------ relative stability ----
def _relative(a, b, eps_min=1e-6):
  return (a - b) / np.where(a == 0, eps_min, a)


def _np_relative_stability(kind, fn, explain_fn, rep_fn, x, t, d, on_flip):
  e0 = np_explain(explain_fn, x, t)
  l0 = np.asarray(fn(jnp.asarray(x)))
  vals, valid = [], []
  for di in d:
    xs = x + di
    es = np_explain(explain_fn, xs, t)
    ls = np.asarray(fn(jnp.asarray(xs)))
    num = np.linalg.norm(_relative(e0, es).reshape(len(x), -1), axis=1)
    if kind == "input":
      den = np.linalg.norm(_relative(x, xs).reshape(len(x), -1), axis=1)
    elif kind == "output":
      den = np.linalg.norm(l0 - ls, axis=1)
    else:
      r0, rs = np.asarray(rep_fn(jnp.asarray(x))), np.asarray(rep_fn(jnp.asarray(xs)))
      den = np.linalg.norm(_relative(r0, rs), axis=1)
    vals.append(num / np.maximum(den, 1e-6))
    valid.append(ls.argmax(1) == l0.argmax(1))
  vals, valid = np.stack(vals), np.stack(valid)
  if on_flip == "nan":
    return np.where(valid.all(0), vals.max(0), np.nan)
  out = np.where(valid, vals, -np.inf).max(0)
  return np.where(valid.any(0), out, np.nan)


REP = lambda z: jnp.tanh(z @ MLP.w1)  # noqa: E731


@pytest.mark.parametrize("kind,on_flip", [("input", "exclude"), ("output", "exclude"),
                                          ("output", "nan"), ("representation", "exclude")])
def test_relative_stability_matches_numpy_reference(kind, on_flip):
  s, eps = 8, 0.6  # large noise, so that some samples flip the prediction
  x = np.asarray(X10)
  t = np.asarray(MLP(X10)).argmax(1)
  d = deltas(KEY, 3, s, (10,), eps)
  ref = _np_relative_stability(kind, MLP, G_MLP, REP, x, t, d, on_flip)
  f = {"input": metrics.relative_input_stability, "output": metrics.relative_output_stability,
       "representation": functools.partial(metrics.relative_representation_stability,
                                           representation_fn=REP)}[kind]
  v = f(MLP, GRAD, X10, t, key=KEY, num_samples=s, epsilon=eps, on_flip=on_flip)
  np.testing.assert_allclose(v, ref, rtol=1e-4)


def test_relative_stability_flip_policies_differ_on_flips():
  t = np.asarray(MLP(X10)).argmax(1)
  kw = dict(key=KEY, num_samples=8, epsilon=0.6)
  ex = np.asarray(metrics.relative_output_stability(MLP, GRAD, X10, t, on_flip="exclude", **kw))
  nan = np.asarray(metrics.relative_output_stability(MLP, GRAD, X10, t, on_flip="nan", **kw))
  ign = np.asarray(metrics.relative_output_stability(MLP, GRAD, X10, t, on_flip="ignore", **kw))
  assert np.isnan(nan).any() and not np.isnan(ex).any()  # this setup has flips
  assert np.all(ign >= ex)


# --------------------------------------------------------------------- RPS ----
def test_rps_of_constant_explanation_is_perfect():
  v = metrics.random_perturbation_similarity(LIN, GRAD, X12, 0, key=KEY, similarity="pearson")
  np.testing.assert_allclose(v, np.ones(4), rtol=1e-6)
  v = metrics.random_perturbation_similarity(LIN, GRAD, X12, 0, key=KEY, similarity="mse")
  np.testing.assert_allclose(v, np.zeros(4), atol=1e-12)


def test_rps_matches_numpy_reference():
  s, eps = 6, 0.3  # the configuration of CASES["rps"]
  d = deltas(KEY, 3, s, (10,), eps)
  x, t = np.asarray(X10), 0
  m0 = np.abs(np_explain(G_MLP, x, t))
  ref = np.mean([[np.corrcoef(m0[b], np.abs(np_explain(G_MLP, x + d[i], t))[b])[0, 1]
                  for b in range(3)] for i in range(s)], axis=0)
  v = metrics.random_perturbation_similarity(MLP, GRAD, X10, t, key=KEY, num_samples=s, epsilon=eps)
  np.testing.assert_allclose(v, ref, rtol=1e-5)
  v = metrics.random_perturbation_similarity(MLP, GRAD, X10, t, key=KEY, num_samples=s, epsilon=eps,
                                             similarity="topk", k=3, chunk_size=2)
  assert v.shape == (3,) and np.all((np.asarray(v) >= 0) & (np.asarray(v) <= 1))


def test_rps_on_images_with_ssim_and_clip():
  img_fn = testing.linear_model(jax.random.key(9), 8 * 8 * 1, 3)
  # A quadratic map is not constant, so RPS < 1.
  expl = lambda f, x, t, *, key: x * attribution.gradient(f, x, t) * x  # noqa: E731
  x = jax.random.uniform(jax.random.key(10), (2, 8, 8, 1))
  v = metrics.random_perturbation_similarity(img_fn, expl, x, 0, key=KEY, similarity="ssim",
                                             input_range=(0.0, 1.0), epsilon=0.1)
  assert v.shape == (2,) and np.all(np.asarray(v) < 1) and np.all(np.asarray(v) > 0)


# -------------------------------------------------------------- contracts ----
# Every contract case shares its compilation with the reference tests above where possible
# (same shapes and static settings); compiling dominates these tests' run time.
CASES = {
    "max_sensitivity": lambda x, t, key, **kw: metrics.max_sensitivity(
        MLP, GRAD, x, t, key=key, num_samples=6, **{"epsilon": 0.3, **kw}),
    "lle_ascent": lambda x, t, key, **kw: metrics.local_lipschitz_estimate(
        MLP, GRAD, x, t, key=key, num_steps=4, num_restarts=3, **kw),
    "ris": lambda x, t, key, **kw: metrics.relative_input_stability(
        MLP, GRAD, x, t, key=key, num_samples=6, epsilon=0.3, **kw),
    "rps": lambda x, t, key, **kw: metrics.random_perturbation_similarity(
        MLP, GRAD, x, t, key=key, num_samples=6, epsilon=0.3, **kw),
}
T3 = jnp.array([0, 2, 1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_equals_per_example(name):
  """One key for the batch equals its per-example split keys, one example at a time."""
  f = CASES[name]
  keys = jax.random.split(KEY, 3)
  batched = np.asarray(f(X10, T3, KEY))
  single = np.concatenate([np.asarray(f(X10[i:i + 1], T3[i:i + 1], keys[i:i + 1]))
                           for i in range(3)])
  np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["max_sensitivity", "lle_ascent"])
def test_chunking_changes_nothing(name):
  f = CASES[name]
  np.testing.assert_allclose(f(X10, T3, KEY, chunk_size=2), f(X10, T3, KEY), rtol=1e-4,
                             atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_key_same_value_other_key_other_value(name):
  f = CASES[name]
  a, b = f(X10, T3, KEY), f(X10, T3, KEY)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, f(X10, T3, jax.random.key(123)))


@pytest.mark.parametrize("name", ["max_sensitivity", "lle_ascent", "ris", "rps"])
def test_jit_equals_eager(name):
  f = CASES[name]
  jitted = f(X10, T3, KEY)
  with jax.disable_jit():
    eager = f(X10, T3, KEY)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5)


def test_epsilon_sweep_compiles_once():
  CASES["max_sensitivity"](X10, T3, KEY, epsilon=0.1)
  n = _robustness._sensitivity._cache_size()
  for eps in (0.2, 0.4):
    CASES["max_sensitivity"](X10, T3, KEY, epsilon=eps)
  assert _robustness._sensitivity._cache_size() == n
  CASES["lle_ascent"](X10, T3, KEY, epsilon=0.1)
  n = _lipschitz._local_lipschitz._cache_size()
  CASES["lle_ascent"](X10, T3, KEY, epsilon=0.2, step_size=0.3)
  assert _lipschitz._local_lipschitz._cache_size() == n


def test_flip_exclusion_on_sensitivity():
  t = jnp.asarray(np.asarray(MLP(X10)).argmax(1), jnp.int32)
  ign = np.asarray(CASES["max_sensitivity"](X10, t, KEY, epsilon=0.6))
  ex = np.asarray(CASES["max_sensitivity"](X10, t, KEY, epsilon=0.6, on_flip="exclude"))
  x = np.asarray(X10)
  d = deltas(KEY, 3, 6, (10,), 0.6)
  phi = np_explain(G_MLP, x, t)
  ratios = np.stack([np.linalg.norm(np_explain(G_MLP, x + d[i], t) - phi, axis=1)
                     for i in range(6)]) / np.linalg.norm(phi, axis=1)
  kept = np.stack([np.asarray(MLP(jnp.asarray(x + d[i]))).argmax(1) == np.asarray(t)
                   for i in range(6)])
  assert not kept.all()  # the setup has prediction flips
  np.testing.assert_allclose(ign, ratios.max(0), rtol=1e-5)
  np.testing.assert_allclose(ex, np.where(kept, ratios, -np.inf).max(0), rtol=1e-5)


# -------------------------------------------------------------- bad input ----
BAD = [
    (lambda: metrics.max_sensitivity(LIN, GRAD, X12, 0, key=KEY, num_samples=0), "num_samples"),
    (lambda: metrics.avg_sensitivity(LIN, GRAD, X12, 0, key=KEY, epsilon=0.0), "epsilon"),
    (lambda: metrics.max_sensitivity(LIN, GRAD, X12, 0, key=KEY, epsilon=-1.0), "epsilon"),
    (lambda: metrics.max_sensitivity(LIN, lambda f, x, t, *, key: x[:, :3], X12, 0, key=KEY),
     "explainer"),
    (lambda: metrics.max_sensitivity(LIN, lambda x, t: x, X12, 0, key=KEY), "explainer"),
    (lambda: metrics.max_sensitivity(LIN, metrics_precomputed(X12), X12, 0, key=KEY),
     "precomputed"),
    (lambda: metrics.max_sensitivity(LIN, GRAD, X12, 0, key=KEY, change_norm="l3"), "change_norm"),
    (lambda: metrics.max_sensitivity(LIN, GRAD, X12, 0, key=KEY, on_flip="drop"), "on_flip"),
    (lambda: metrics.max_sensitivity(None, GRAD, X12, 0, key=KEY, on_flip="exclude"), "fn"),
    (lambda: metrics.max_sensitivity(LIN, GRAD, X12, 0, key=None), "key"),
    (lambda: metrics.max_sensitivity(LIN, GRAD, X12, 0, key=jax.random.split(KEY, 3)), "key"),
    (lambda: metrics.max_sensitivity(LIN, GRAD, X12, [0, 1], key=KEY), "target"),
    (lambda: metrics.local_lipschitz_estimate(LIN, GRAD, X12, 0, key=KEY, method="bo"), "method"),
    (lambda: metrics.local_lipschitz_estimate(LIN, GRAD, X12, 0, key=KEY, norm="l7"), "norm"),
    (lambda: metrics.local_lipschitz_estimate(LIN, GRAD, X12, 0, key=KEY, num_samples=-2), "num_samples"),
    (lambda: metrics.local_lipschitz_estimate(LIN, GRAD, X12, 0, key=KEY, epsilon=0), "epsilon"),
    (lambda: metrics.senn_local_lipschitz_estimate(lambda z: z[0], lambda z: z, X12, key=KEY),
     "theta_fn"),
    (lambda: metrics.relative_input_stability(None, GRAD, X12, 0, key=KEY), "fn"),
    (lambda: metrics.relative_output_stability(LIN, GRAD, X12, 0, key=KEY, change_norm="fro2"),
     "change_norm"),
    (lambda: metrics.relative_representation_stability(LIN, GRAD, X12, 0, key=KEY,
                                                       representation_fn=None),
     "representation_fn"),
    (lambda: metrics.random_perturbation_similarity(LIN, GRAD, X12, 0, key=KEY, similarity="iou"),
     "similarity"),
    (lambda: metrics.random_perturbation_similarity(LIN, GRAD, X12, 0, key=KEY, similarity="topk"),
     "k"),
    (lambda: metrics.random_perturbation_similarity(LIN, GRAD, X12, 0, key=KEY, similarity="ssim"),
     "ssim"),
    (lambda: metrics.random_perturbation_similarity(LIN, GRAD, X12, 0, key=KEY, num_samples=0),
     "num_samples"),
    (lambda: metrics.random_perturbation_similarity(LIN, GRAD, X12, 0, key=KEY,
                                                    input_range=(1, 0)), "input_range"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_raises_value_error_naming_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()


# ------------------------------------------------------- attack similarity ----
def test_attack_similarity_bridges_to_attacks():
  from rattr_jax import attacks
  x01 = jax.random.uniform(jax.random.key(12), (3, 10))
  cfg = attacks.AttackConfig(num_steps=3, k=3, epsilon=0.1, step_size=0.05)
  r = metrics.attack_similarity(MLP, attribution.gradient, x01, T3, key=KEY, attack="topk",
                                config=cfg)
  direct = attacks.topk_attack(MLP, attribution.gradient, x01, T3, key=KEY, config=cfg)
  np.testing.assert_array_equal(r.x_adv, direct.x_adv)
  np.testing.assert_array_equal(r.success, direct.success)
  ref = metrics.topk_intersection(jnp.abs(G_MLP(x01, T3)), jnp.abs(G_MLP(r.x_adv, T3)), 3)
  np.testing.assert_allclose(r.value, ref)
  assert r.value.shape == (3,)
  # Where the attack failed, x_adv = x and the maps coincide.
  v = np.asarray(r.value)
  assert np.all(v[~np.asarray(r.success)] == 1)
  with pytest.raises(ValueError, match="attack"):
    metrics.attack_similarity(MLP, attribution.gradient, x01, T3, key=KEY, attack="pgd")
  with pytest.raises(ValueError, match="similarity"):
    metrics.attack_similarity(MLP, attribution.gradient, x01, T3, key=KEY,
                              attack=attacks.topk_attack, similarity="jaccard")
