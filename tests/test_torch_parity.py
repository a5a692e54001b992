"""Parity with Captum on the same networks and weights (optional `bench` extra).

The PyTorch twins of the zoo models (`benchmarks/_torch_models.py`) get exact
weight copies, so rattr_jax's `gradient`, `integrated_gradients` (every
quadrature rule) and `smoothgrad` / `vargrad` must equal Captum's `Saliency`,
`IntegratedGradients(method=...)` and `NoiseTunnel` to float32 rounding.

SmoothGrad draws its noise from different generators in the two libraries, so
it is compared deterministically: Captum's NoiseTunnel is fed rattr_jax's own
noise draws (sample ``s`` uses ``normal(fold_in(key, s), x.shape)`` scaled by
``stddev * range(x_b)``), and at zero noise both reduce to the gradient.

Known, documented differences (not bugs in either library):
  * Captum's ``riemann_trapezoid`` weights sum to ``(n-1)/n``; ours to 1
    (see `test_ig_equals_captum_every_method`).
  * Max-pooling is not differentiable at tied windows: JAX splits the gradient
    evenly among tied maxima, PyTorch gives it to the first one. Near-constant
    images (a constant non-zero baseline, or path points very close to a zero
    baseline on a softplus net) have near-tied windows, where float rounding
    differences between the two frameworks' convolutions can flip the choice
    (measured up to 5e-4 relative on softplus CNNs with 20 Gauss-Legendre
    steps). The conv-net checks therefore use ReLU nets and a zero baseline
    (path points ``a * x`` are bit-identical in both frameworks); the
    quadrature rules are also checked on a smooth MLP with a random baseline.
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


def _case(name, shape, batch, activation="relu", seed=0):
  model = create_model(name, input_shape=shape, num_classes=10, activation=activation, seed=seed)
  rng = np.random.RandomState(seed)
  x = rng.uniform(0.0, 1.0, (batch,) + shape).astype(np.float32)
  t = (np.arange(batch) * 3 % 10).astype(np.int32)
  tm = TM.torch_from_flax(model)
  return as_fn(model), tm, x, t, TM.to_torch_input(tm, x), torch.from_numpy(t.astype(np.int64))


@pytest.fixture(scope="module")
def cnn():
  return _case("cnn", (16, 16, 1), 3)


@pytest.fixture(scope="module")
def lenet():
  return _case("lenet", (16, 16, 3), 2)


@pytest.fixture(scope="module")
def mlp():
  return _case("mlp", (20,), 4, activation="softplus:5")


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
  shape = {"cnn": (28, 28, 1), "lenet": (32, 32, 3), "mlp": (20,)}[case]
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
@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_ig_equals_captum_every_method(case, method, request):
  """The same nodes and weights as Captum's ``method=``, up to one documented scale.

  Captum's ``riemann_trapezoid`` weights are ``1/n`` (halved at both ends),
  which sum to ``(n-1)/n``; rattr_jax uses the trapezoid rule on ``n`` nodes,
  weights ``1/(n-1)`` summing to 1 (so completeness holds). The nodes are the
  same, so ours equals Captum's times ``n/(n-1)``.
  """
  fn, tm, x, t, xt, tt = request.getfixturevalue(case)
  if case == "mlp":  # smooth model: any baseline
    baseline = np.random.RandomState(7).uniform(-0.5, 0.5, x.shape).astype(np.float32)
  else:  # ReLU CNN: zero baseline (see the module docstring)
    baseline = np.zeros_like(x)
  ig = captum_attr.IntegratedGradients(tm)
  for n_steps in ((2, 7) if case == "mlp" else (5,)):  # conv nets: fewer compilations
    ours = A.integrated_gradients(fn, jnp.asarray(x), jnp.asarray(t), baseline=baseline,
                                  num_steps=n_steps, method=method, chunk_size=3)
    theirs = TM.from_torch(tm, ig.attribute(xt, baselines=TM.to_torch_input(tm, baseline),
                                            target=tt, n_steps=n_steps, method=method))
    if method == "riemann_trapezoid":
      theirs = theirs * (n_steps / (n_steps - 1))
    _close(ours, theirs)


@pytest.mark.parametrize("case", ["cnn", "lenet", "mlp"])
def test_ig_equals_captum_benchmark_setting(case, request):
  """Gauss-Legendre (Captum's default), default chunking on both sides vs. chunked Captum."""
  fn, tm, x, t, xt, tt = request.getfixturevalue(case)
  ours = A.integrated_gradients(fn, jnp.asarray(x), jnp.asarray(t), num_steps=20,
                                method="gausslegendre")
  theirs = captum_attr.IntegratedGradients(tm).attribute(
      xt, target=tt, n_steps=20, method="gausslegendre", internal_batch_size=16)
  _close(ours, TM.from_torch(tm, theirs))


def _our_noise(x, key, stddev, num_samples):
  """rattr_jax's SmoothGrad noise: sample ``s`` is ``normal(fold_in(key, s), x.shape)``."""
  axes = tuple(range(1, x.ndim))
  sigma = stddev * (x.max(axes, keepdims=True) - x.min(axes, keepdims=True))
  eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, s), x.shape, x.dtype))
                  for s in range(num_samples)])  # [S, B, *F]
  return sigma[None] * eps


@pytest.mark.parametrize("case,nt_type", [("cnn", "smoothgrad"), ("mlp", "smoothgrad"),
                                          ("mlp", "smoothgrad_sq"), ("mlp", "vargrad")])
def test_smoothgrad_equals_noise_tunnel_on_our_noise(case, nt_type, request, monkeypatch):
  """End to end: NoiseTunnel(Saliency) fed rattr_jax's noise == smoothgrad / vargrad."""
  fn, tm, x, t, xt, tt = request.getfixturevalue(case)
  key, s, stddev = jax.random.key(11), 6, 0.15
  noise = _our_noise(x, key, stddev, s)  # [S, B, *F]
  # Captum's layout: each example repeated S times consecutively, in the model's layout.
  flat = np.swapaxes(noise, 0, 1).reshape((x.shape[0] * s,) + x.shape[1:])
  noise_t = TM.to_torch_input(tm, flat)

  def add_our_noise(inp, stdev, nt_samples_partition):
    assert nt_samples_partition == s
    return inp.repeat_interleave(nt_samples_partition, dim=0) + noise_t

  monkeypatch.setattr(captum_attr.NoiseTunnel, "_add_noise_to_input", staticmethod(add_our_noise))
  nt = captum_attr.NoiseTunnel(captum_attr.Saliency(tm))
  theirs = TM.from_torch(tm, nt.attribute(xt, nt_type=nt_type, nt_samples=s, stdevs=stddev,
                                          target=tt, abs=False))
  xj, tj = jnp.asarray(x), jnp.asarray(t)
  kw = dict(key=key, num_samples=s, stddev=stddev, chunk_size=4)
  if nt_type == "vargrad":
    ours = A.vargrad(fn, xj, tj, **kw)
    rtol = 1e-3  # a difference of two moments: cancellation
  else:
    ours = A.smoothgrad(fn, xj, tj, squared=nt_type == "smoothgrad_sq", **kw)
    rtol = RTOL
  _close(ours, theirs, rtol=rtol)


@pytest.mark.parametrize("case,nt_type,squared", [("cnn", "smoothgrad", False),
                                                   ("mlp", "smoothgrad_sq", True)])
def test_smoothgrad_zero_noise_equals_captum(case, nt_type, squared, request):
  fn, tm, x, t, xt, tt = request.getfixturevalue(case)
  ours = A.smoothgrad(fn, jnp.asarray(x), jnp.asarray(t), key=jax.random.key(0),
                      num_samples=5, stddev=0.0, squared=squared)
  nt = captum_attr.NoiseTunnel(captum_attr.Saliency(tm))
  theirs = nt.attribute(xt, nt_type=nt_type, nt_samples=5, stdevs=0.0, target=tt, abs=False)
  _close(ours, TM.from_torch(tm, theirs))
  var = A.vargrad(fn, jnp.asarray(x), jnp.asarray(t), key=jax.random.key(0),
                  num_samples=5, stddev=0.0)
  g2 = float(np.max(np.asarray(A.gradient(fn, jnp.asarray(x), jnp.asarray(t))) ** 2))
  # Identical inputs at different batch positions may round differently in the
  # convolutions, so the variance is only zero up to rounding.
  assert float(jnp.max(var)) <= 1e-4 * g2


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


def _tied_images(batch, side, seed):
  """Digit-like images: a zero background (whole max-pool windows tie) and a bright blob."""
  rng = np.random.RandomState(seed)
  x = np.zeros((batch, side, side, 1), np.float32)
  c = side // 2
  x[:, c - 4:c + 3, c - 3:c + 4, 0] = rng.uniform(0.3, 1.0, (batch, 7, 7))
  return x


def test_relu_maxpool_saliency_with_tied_windows_equals_captum():
  from captum.attr import Saliency
  model = create_model("cnn", input_shape=(20, 20, 1), num_classes=10, activation="relu",
                       seed=3, widths=(6, 8, 16))
  # Non-zero biases, as after training (at zero bias a zero window sits at the ReLU kink).
  for i, layer in enumerate((model.conv1, model.conv2, model.fc1, model.fc2)):
    layer.bias.value = 0.1 * jax.random.normal(jax.random.key(i), layer.bias.shape) + 0.05
  fn, tm = as_fn(model), TM.torch_from_flax(model)
  x = _tied_images(4, 20, 0)
  t = np.array([1, 4, 7, 9], np.int32)
  # The background really produces tied windows in the first pooling layer.
  h = np.asarray(jax.nn.relu(model.conv1(jnp.asarray(x))))
  win = h.reshape(4, 10, 2, 10, 2, 6)
  ties = (win == win.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1
  assert ties.mean() > 0.3
  ours = np.asarray(A.gradient(fn, jnp.asarray(x), jnp.asarray(t)))
  xt = TM.to_torch_input(tm, x)
  theirs = TM.from_torch(tm, Saliency(tm).attribute(xt, target=torch.from_numpy(
      t.astype(np.int64)), abs=False))
  _close(ours, theirs, rtol=1e-5)

  # Splitting the gradient evenly between tied maxima (jnp.max's rule) gives another map.
  def split_pool(h):
    b, hh, ww, c = h.shape
    return h.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))

  def fn_split(x):
    a = model.activation
    h = split_pool(a(model.conv1(x)))
    h = split_pool(a(model.conv2(h)))
    return model.fc2(a(model.fc1(h.reshape(h.shape[0], -1))))

  split = np.asarray(A.gradient(fn_split, jnp.asarray(x), jnp.asarray(t)))
  assert np.max(np.abs(split - theirs)) / np.max(np.abs(theirs)) > 1e-2


@pytest.mark.parametrize("name,shape,widths", [("cnn", (16, 16, 1), (4, 8, 12)),
                                               ("lenet", (16, 16, 3), (8, 12, 8, 16, 24))])
def test_parameter_gradients_of_a_training_step_equal_torch(name, shape, widths):
  """CE parameter gradients (custom weight-gradient convolution) equal torch autograd's,
  also inside a `lax.scan` (the fused steps `TrainStep.run` uses)."""
  from flax import nnx

  from rattr_jax import models
  model = create_model(name, input_shape=shape, num_classes=10, activation="softplus:3", seed=2,
                       widths=widths)
  tm = TM.torch_from_flax(model).train()
  rng = np.random.RandomState(0)
  x = rng.uniform(0, 1, (5,) + shape).astype(np.float32)
  y = (np.arange(5) % 10).astype(np.int32)
  apply, state = models.functional(model)
  params = nnx.state(model, nnx.Param)

  def loss(p, x):
    logits = apply(p, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(y)[:, None], 1))

  g = jax.grad(loss)(params, jnp.asarray(x))
  gs = jax.jit(lambda p: jax.lax.scan(lambda c, xb: (c, jax.grad(loss)(p, xb)), 0,
                                      jnp.asarray(x)[None])[1])(params)
  tm.zero_grad()
  torch.nn.functional.cross_entropy(tm(TM.to_torch_input(tm, x)),
                                    torch.from_numpy(y.astype(np.int64))).backward()
  for conv in [c for c in ("conv1", "conv2", "conv3", "conv4") if hasattr(tm, c)]:
    ours = np.asarray(g[conv]["kernel"][...])
    theirs = getattr(tm, conv).weight.grad.numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    _close(ours, theirs, rtol=1e-4)
    _close(np.asarray(gs[conv]["kernel"][...])[0], theirs, rtol=1e-4)
    _close(np.asarray(g[conv]["bias"][...]), getattr(tm, conv).bias.grad.numpy(), rtol=1e-4)
