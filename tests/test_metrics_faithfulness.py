"""Faithfulness metrics: closed forms, numpy references, contracts, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import attribution, metrics, testing
from rattr_jax.explainers import precomputed
from rattr_jax.metrics import _common as C

KEY = jax.random.key(0)
LIN = testing.linear_model(jax.random.key(1), 12, 3)
X12 = jax.random.normal(jax.random.key(3), (4, 12))
G_LIN = functools.partial(attribution.gradient, LIN)
GRAD, IXG = attribution.gradient, attribution.input_x_gradient
IXG_LIN = functools.partial(attribution.input_x_gradient, LIN)
IMG_LIN = testing.linear_model(jax.random.key(4), 6 * 6 * 2, 3)
XIMG = jax.random.uniform(jax.random.key(5), (3, 6, 6, 2))
IXG_IMG = functools.partial(attribution.input_x_gradient, IMG_LIN)


MLP = testing.TanhMLP(jax.random.key(6), 12, 16, 3)
G_MLP = functools.partial(attribution.gradient, MLP)
T4 = jnp.array([0, 2, 1, 1])


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def out(fn, x, t, output):
  z = np.asarray(fn(jnp.asarray(x, jnp.float32)), np.float64)
  z = softmax(z) if output == "probability" else z
  return z[np.arange(len(x)), t]


# -------------------------------------------------- faithfulness estimate ----
def test_faithfulness_is_one_for_linear_input_x_gradient():
  v = metrics.faithfulness_estimate(LIN, IXG, X12, 1, baseline="zero", output="logit")
  np.testing.assert_allclose(v, np.ones(4), rtol=1e-5)


def test_faithfulness_patches_on_images_linear_is_one():
  for p in (1, 2, 4):
    v = metrics.faithfulness_estimate(IMG_LIN, IXG, XIMG, 2, patch_size=p, output="logit")
    np.testing.assert_allclose(v, np.ones(3), rtol=1e-5)


@pytest.mark.parametrize("baseline", ["mean", "median", "min", 0.5])
def test_faithfulness_baselines_linear_with_matching_attribution(baseline):
  """Attribution (x - b) * w equals the logit drop of removing each feature to b."""
  x = np.asarray(X12)
  b = {"mean": x.mean(1, keepdims=True), "median": np.median(x, 1, keepdims=True),
       "min": x.min(1, keepdims=True), 0.5: np.full((4, 1), 0.5)}[baseline]
  attr = (x - b) * np.asarray(LIN.W[1])[None]
  v = metrics.faithfulness_estimate(LIN, precomputed(jnp.asarray(attr)), X12, 1, baseline=baseline,
                                    output="logit")
  np.testing.assert_allclose(v, np.ones(4), rtol=1e-5)
  # A per-feature baseline array (SENN's training median) works the same way.
  base = np.linspace(-1, 1, 12).astype(np.float32)
  attr = (x - base[None]) * np.asarray(LIN.W[1])[None]
  v = metrics.faithfulness_estimate(LIN, precomputed(jnp.asarray(attr)), X12, 1, baseline=base,
                                    output="logit")
  np.testing.assert_allclose(v, np.ones(4), rtol=1e-5)


def test_faithfulness_matches_numpy_reference_probability():
  x, t = np.asarray(X12), np.asarray(T4)
  attr = np.asarray(G_MLP(X12, T4))
  p0 = out(MLP, x, t, "probability")
  drops = []
  for i in range(12):
    xr = x.copy()
    xr[:, i] = 0.0
    drops.append(p0 - out(MLP, xr, t, "probability"))
  drops = np.stack(drops, 1)
  ref = [np.corrcoef(attr[b], drops[b])[0, 1] for b in range(4)]
  v = metrics.faithfulness_estimate(MLP, GRAD, X12, T4, chunk_size=5)
  np.testing.assert_allclose(v, ref, rtol=1e-3, atol=1e-5)


# -------------------------------------------------- insertion / deletion ----
def _np_curve(mode, fn, attr, x, t, num_steps, baseline, output):
  b, n = x.shape[0], x[0].size
  order = np.argsort(-attr.reshape(b, -1), axis=1, kind="stable")
  curve = []
  for i in range(num_steps + 1):
    k = (i * n) // num_steps
    xs = (np.zeros_like(x) + baseline) if mode == "insertion" else x.copy()
    xs, xf = xs.reshape(b, -1), x.reshape(b, -1)
    for e in range(b):
      idx = order[e, :k]
      xs[e, idx] = xf[e, idx] if mode == "insertion" else baseline
    curve.append(out(fn, xs.reshape(x.shape), t, output))
  return np.stack(curve, 1)


@pytest.mark.parametrize("mode", ["insertion", "deletion"])
@pytest.mark.parametrize("output", ["probability", "logit"])
def test_curves_match_numpy_reference(mode, output):
  x, t = np.asarray(X12), np.asarray(T4)
  attr = np.asarray(G_MLP(X12, T4))
  ref = _np_curve(mode, MLP, np.abs(attr), x, t, 6, 0.0, output)
  f = metrics.insertion if mode == "insertion" else metrics.deletion
  r = f(MLP, GRAD, X12, T4, num_steps=6, output=output, chunk_size=3)
  np.testing.assert_allclose(r.curve, ref, rtol=1e-5, atol=1e-6)
  fr = np.arange(7) * 12 // 6 / 12
  np.testing.assert_allclose(r.fractions, fr)
  np.testing.assert_allclose(r.auc, np.trapezoid(ref, fr, axis=1), rtol=1e-5, atol=1e-6)
  aopc = ref.mean(1) if mode == "insertion" else (ref[:, :1] - ref).mean(1)
  np.testing.assert_allclose(r.aopc, aopc, rtol=1e-4, atol=1e-6)
  full = out(MLP, x, t, output)
  np.testing.assert_allclose(r.curve[:, -1 if mode == "insertion" else 0], full, rtol=1e-5)


def test_pixel_curves_insert_whole_pixels():
  """Image ranks are per pixel (channels summed); steps insert all channels of a pixel."""
  r = metrics.insertion(IMG_LIN, IXG, XIMG, 0, num_steps=4, reduce="sum", output="logit")
  attr = np.asarray(IXG_IMG(XIMG, 0))
  score = attr.sum(-1).reshape(3, -1)
  order = np.argsort(-score, 1, kind="stable")
  w = np.asarray(IMG_LIN.W[0]).reshape(6, 6, 2)
  x = np.asarray(XIMG)
  for i, k in enumerate([0, 9, 18, 27, 36]):
    for e in range(3):
      mask = np.zeros(36, bool)
      mask[order[e, :k]] = True
      logit = (x[e] * w * mask.reshape(6, 6, 1)).sum() + float(IMG_LIN.b[0])
      np.testing.assert_allclose(r.curve[e, i], logit, rtol=1e-4, atol=1e-5)
  # Pixels enter in decreasing order of their exact logit contribution: a concave curve.
  assert np.all(np.diff(np.asarray(r.curve), n=2, axis=1) <= 1e-4)


def test_adversarial_insertion_ranks_by_attacked_map_inserts_clean_pixels():
  x_adv = X12 + 0.5 * jax.random.normal(jax.random.key(7), X12.shape)
  r = metrics.adversarial_insertion(MLP, GRAD, X12, T4, x_adv, num_steps=4)
  ref = metrics.insertion(MLP, precomputed(G_MLP(x_adv, T4)), X12, T4, num_steps=4)
  np.testing.assert_allclose(r.curve, ref.curve, rtol=1e-6)
  np.testing.assert_allclose(r.auc, ref.auc, rtol=1e-6)
  # Not the same as ranking by the clean map.
  assert not np.allclose(r.curve, metrics.insertion(MLP, GRAD, X12, T4, num_steps=4).curve)


# -------------------------------------------------------------- infidelity ----
def test_infidelity_is_zero_for_linear_with_matching_perturbation():
  gi = metrics.infidelity(LIN, GRAD, X12, 1, key=KEY, num_samples=20)
  np.testing.assert_allclose(gi, np.zeros(4), atol=1e-9)
  ixg = metrics.infidelity(LIN, IXG, X12, 1, key=KEY, num_samples=20,
                           multiply_by_inputs=True)
  np.testing.assert_allclose(ixg, np.zeros(4), atol=1e-9)
  # Without the matching perturbation input x gradient is not faithful.
  assert np.all(np.asarray(metrics.infidelity(LIN, IXG, X12, 1, key=KEY)) > 1e-3)


def test_infidelity_normalize_removes_scale():
  scaled = lambda f, x, t, *, key: 3.0 * GRAD(f, x, t)  # noqa: E731
  plain = np.asarray(metrics.infidelity(LIN, scaled, X12, 1, key=KEY))
  norm = metrics.infidelity(LIN, scaled, X12, 1, key=KEY, normalize=True)
  assert np.all(plain > 1e-3)
  np.testing.assert_allclose(norm, np.zeros(4), atol=1e-8)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_numpy_reference(normalize):
  s, eps = 7, 0.3
  keys = C.example_keys(KEY, 4)
  d = np.asarray(C.sample_noise(keys, jnp.arange(s), (12,), jnp.float32, jnp.float32(eps),
                                "gaussian"), np.float64)
  x, t = np.asarray(X12, np.float64), np.asarray(T4)
  attr = np.asarray(G_MLP(X12, T4), np.float64)
  f0 = out(MLP, x, t, "logit")
  a = np.stack([(d[i] * attr).sum(1) for i in range(s)])
  dd = np.stack([f0 - out(MLP, x - d[i], t, "logit") for i in range(s)])
  if normalize:
    beta = (a * dd).sum(0) / (a * a).sum(0)
    ref = ((beta * a - dd) ** 2).mean(0)
  else:
    ref = ((a - dd) ** 2).mean(0)
  v = metrics.infidelity(MLP, GRAD, X12, T4, key=KEY, num_samples=s, epsilon=eps,
                         normalize=normalize, chunk_size=3)
  np.testing.assert_allclose(v, ref, rtol=1e-3, atol=1e-7)


# -------------------------------------------------------------- contracts ----
CASES = {
    "faithfulness": lambda x, t, key: metrics.faithfulness_estimate(MLP, GRAD, x, t),
    "insertion": lambda x, t, key: metrics.insertion(MLP, GRAD, x, t, num_steps=4).auc,
    "deletion": lambda x, t, key: metrics.deletion(MLP, GRAD, x, t, num_steps=4).aopc,
    "infidelity": lambda x, t, key: metrics.infidelity(MLP, GRAD, x, t, key=key, num_samples=4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_equals_per_example(name):
  f = CASES[name]
  keys = jax.random.split(KEY, 4)
  batched = np.asarray(f(X12, T4, keys))
  single = np.concatenate([np.asarray(f(X12[i:i + 1], T4[i:i + 1], keys[i:i + 1]))
                           for i in range(4)])
  np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_equals_eager(name):
  f = CASES[name]
  jitted = f(X12, T4, KEY)
  with jax.disable_jit():
    eager = f(X12, T4, KEY)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)


def test_infidelity_same_key_same_value():
  a = metrics.infidelity(MLP, GRAD, X12, T4, key=KEY)
  np.testing.assert_array_equal(a, metrics.infidelity(MLP, GRAD, X12, T4, key=KEY))
  assert not np.allclose(a, metrics.infidelity(MLP, GRAD, X12, T4, key=jax.random.key(5)))


# -------------------------------------------------------------- bad input ----
BAD = [
    (lambda: metrics.faithfulness_estimate(LIN, IXG, X12, 0, baseline=np.zeros(5)),
     "baseline"),
    (lambda: metrics.faithfulness_estimate(LIN, IXG, X12, 0, baseline="black"), "baseline"),
    (lambda: metrics.faithfulness_estimate(LIN, lambda f, x, t, *, key: x[:, :2], X12, 0),
     "explainer"),
    (lambda: metrics.faithfulness_estimate(LIN, precomputed(np.zeros((4, 11))), X12, 0),
     "explainer"),
    (lambda: metrics.faithfulness_estimate(LIN, np.zeros((4, 12)), X12, 0), "explainer"),
    (lambda: metrics.faithfulness_estimate(None, IXG, X12, 0), "fn"),
    (lambda: metrics.insertion(LIN, attribution.smoothgrad, X12, 0, num_steps=4), "key"),
    (lambda: metrics.faithfulness_estimate(LIN, IXG, X12, 0, patch_size=2), "patch_size"),
    (lambda: metrics.faithfulness_estimate(LIN, IXG, X12, 0, output="prob"), "output"),
    (lambda: metrics.insertion(LIN, IXG, X12, 0, num_steps=0), "num_steps"),
    (lambda: metrics.insertion(LIN, IXG, X12, 0, num_steps=13), "num_steps"),
    (lambda: metrics.deletion(LIN, IXG, X12, 0, num_steps=4, baseline=np.ones((4, 3))),
     "baseline"),
    (lambda: metrics.deletion(LIN, IXG, X12, 0, num_steps=4, reduce="mean"), "reduce"),
    (lambda: metrics.adversarial_insertion(LIN, IXG, X12, 0, X12[:2], num_steps=4),
     "x_adv"),
    (lambda: metrics.infidelity(LIN, IXG, X12, 0, key=KEY, num_samples=0), "num_samples"),
    (lambda: metrics.infidelity(LIN, IXG, X12, 0, key=KEY, epsilon=-0.1), "epsilon"),
    (lambda: metrics.infidelity(LIN, IXG, X12, 0, key=KEY, noise="laplace"), "noise"),
    (lambda: metrics.infidelity(LIN, IXG, X12, 0, key=KEY, baseline=np.ones(3)), "baseline"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_raises_value_error_naming_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()
