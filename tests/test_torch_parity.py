"""Parity with Captum on the same networks and weights (optional `bench` extra).

The PyTorch twins of the zoo models (`benchmarks/_torch_models.py`) get exact
weight copies, so rattr_jax's `gradient`, `integrated_gradients` (every
quadrature rule) and `smoothgrad` must equal Captum's `Saliency`,
`IntegratedGradients(method=...)` and `NoiseTunnel` to float32 rounding.
SmoothGrad draws its noise from different generators in the two libraries, so
it is compared deterministically: at zero noise (both reduce to the gradient),
and by replaying Captum's own noise draws through rattr_jax's gradient.
Smooth (softplus) models are used so that float rounding near ReLU kinks
cannot flip a path point's activation pattern.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _torch_models as TM  # noqa: E402

from rattr_jax import attribution as A  # noqa: E402
from rattr_jax.models import as_fn, create_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require")

RTOL = 2e-4  # relative to the largest attribution magnitude (float32, different kernels)


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
  old = torch.get_num_threads()
  torch.set_num_threads(2)
  yield
  torch.set_num_threads(old)


def _case(name, shape, batch, activation="softplus:5", seed=0):
  model = create_model(name, input_shape=shape, num_classes=10, activation=activation, seed=seed)
  rng = np.random.RandomState(seed)
  x = rng.uniform(0.0, 1.0, (batch,) + shape).astype(np.float32)
  t = (np.arange(batch) * 3 % 10).astype(np.int32)
  tm = TM.torch_from_flax(model)
  return as_fn(model), tm, x, t, TM.to_torch_input(tm, x), torch.from_numpy(t.astype(np.int64))


@pytest.fixture(scope="module")
def cnn():
  return _case("cnn", (28, 28, 1), 3)


@pytest.fixture(scope="module")
def lenet():
  return _case("lenet", (16, 16, 3), 2)


@pytest.fixture(scope="module")
def mlp():
  return _case("mlp", (20,), 4)


def _close(ours, theirs, rtol=RTOL):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape
  scale = np.max(np.abs(theirs))
  assert scale > 0
  err = np.max(np.abs(ours - theirs)) / scale
  assert err < rtol, f"relative error {err:.2e}"


@pytest.mark.parametrize("case", ["cnn", "lenet", "mlp"])
@pytest.mark.parametrize("activation", ["relu", "softplus:5"])
def test_weight_copy_same_logits(case, activation):
  shape = {"cnn": (28, 28, 1), "lenet": (16, 16, 3), "mlp": (20,)}[case]
  fn, tm, x, _, xt, _ = _case(case, shape, 3, activation=activation, seed=1)
  with torch.no_grad():
    _close(fn(jnp.asarray(x)), tm(xt).numpy(), rtol=1e-5)


@pytest.mark.parametrize("case", ["cnn", "lenet", "mlp"])
def test_gradient_equals_captum_saliency(case, request):
  fn, tm, x, t, xt, tt = request.getfixturevalue(case)
  ours = A.gradient(fn, jnp.asarray(x), jnp.asarray(t))
  theirs = captum_attr.Saliency(tm).attribute(xt, target=tt, abs=False)
  _close(ours, TM.from_torch(tm, theirs))


@pytest.mark.parametrize("method", A.INTEGRATION_METHODS)
def test_ig_equals_captum_every_method(cnn, method):
  fn, tm, x, t, xt, tt = cnn
  baseline = np.full_like(x, 0.1)
  ig = captum_attr.IntegratedGradients(tm)
  for n_steps in (2, 7):
    ours = A.integrated_gradients(fn, jnp.asarray(x), jnp.asarray(t), baseline=baseline,
                                  num_steps=n_steps, method=method, batch_size=3)
    theirs = ig.attribute(xt, baselines=TM.to_torch_input(tm, baseline), target=tt,
                          n_steps=n_steps, method=method)
    _close(ours, TM.from_torch(tm, theirs))


@pytest.mark.parametrize("case", ["lenet", "mlp"])
def test_ig_equals_captum_other_models(case, request):
  fn, tm, x, t, xt, tt = request.getfixturevalue(case)
  ours = A.integrated_gradients(fn, jnp.asarray(x), jnp.asarray(t), num_steps=20,
                                method="gausslegendre")
  theirs = captum_attr.IntegratedGradients(tm).attribute(
      xt, target=tt, n_steps=20, method="gausslegendre", internal_batch_size=16)
  _close(ours, TM.from_torch(tm, theirs))


def test_ig_relu_cnn_matches_captum():
  """ReLU nets too (the benchmark's setting); kinks are rare at these points."""
  fn, tm, x, t, xt, tt = _case("cnn", (28, 28, 1), 2, activation="relu", seed=3)
  ours = A.integrated_gradients(fn, jnp.asarray(x), jnp.asarray(t), num_steps=10,
                                method="riemann_trapezoid")
  theirs = captum_attr.IntegratedGradients(tm).attribute(
      xt, target=tt, n_steps=10, method="riemann_trapezoid")
  _close(ours, TM.from_torch(tm, theirs), rtol=1e-3)


@pytest.mark.parametrize("nt_type,squared", [("smoothgrad", False), ("smoothgrad_sq", True)])
def test_smoothgrad_zero_noise_equals_captum(cnn, nt_type, squared):
  fn, tm, x, t, xt, tt = cnn
  ours = A.smoothgrad(fn, jnp.asarray(x), jnp.asarray(t), key=jax.random.key(0),
                      num_samples=5, stddev=0.0, squared=squared)
  nt = captum_attr.NoiseTunnel(captum_attr.Saliency(tm))
  theirs = nt.attribute(xt, nt_type=nt_type, nt_samples=5, stdevs=0.0, target=tt, abs=False)
  _close(ours, TM.from_torch(tm, theirs))
  var = A.vargrad(fn, jnp.asarray(x), jnp.asarray(t), key=jax.random.key(0),
                  num_samples=5, stddev=0.0)
  scale = float(np.max(np.asarray(ours) ** 2))
  assert float(jnp.max(var)) <= 1e-6 * scale


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_replayed_noise(mlp, nt_type):
  """Captum's NoiseTunnel equals rattr_jax's moments over the same noisy points.

  NoiseTunnel draws ``torch.normal(0, stdev)`` of shape ``[B * S, *F]`` with
  examples repeated ``S`` times consecutively; re-seeding torch replays it.
  """
  fn, tm, x, t, xt, tt = mlp
  s, sigma = 6, 0.2
  torch.manual_seed(123)
  nt = captum_attr.NoiseTunnel(captum_attr.Saliency(tm))
  theirs = nt.attribute(xt, nt_type=nt_type, nt_samples=s, stdevs=sigma, target=tt, abs=False)
  torch.manual_seed(123)
  noise = torch.normal(0, torch.tensor(sigma).repeat((x.shape[0] * s,) + x.shape[1:]))
  pts = np.repeat(x, s, axis=0) + noise.numpy()
  g = np.asarray(A.gradient(fn, jnp.asarray(pts), jnp.asarray(np.repeat(t, s))))
  g = g.reshape((x.shape[0], s) + x.shape[1:])
  m1, m2 = g.mean(1), (g * g).mean(1)
  ours = {"smoothgrad": m1, "smoothgrad_sq": m2, "vargrad": m2 - m1 * m1}[nt_type]
  _close(ours, TM.from_torch(tm, theirs), rtol=1e-4 if nt_type != "vargrad" else 1e-3)


def test_smoothgrad_moments_match_captum_definitions(mlp):
  """Our smoothgrad/vargrad are the first moment / population variance of the same noisy
  gradients that `test_noise_tunnel_replayed_noise` ties to Captum."""
  fn, _, x, t, _, _ = mlp
  xj, tj, key = jnp.asarray(x), jnp.asarray(t), jax.random.key(5)
  kw = dict(key=key, num_samples=8, stddev=0.3)
  sg = A.smoothgrad(fn, xj, tj, **kw)
  sq = A.smoothgrad(fn, xj, tj, squared=True, **kw)
  vg = A.vargrad(fn, xj, tj, **kw)
  np.testing.assert_allclose(vg, np.maximum(sq - sg * sg, 0.0), rtol=1e-4, atol=1e-7)
