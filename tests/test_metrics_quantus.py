"""Reference values: our metrics against Quantus 0.6 and Captum on the same network.

A small MNIST-style CNN (8x8x1, softplus-10 so that gradients are smooth) is
built in Flax and copied into its PyTorch twin (`benchmarks/_torch_models.py`).
Quantus runs entirely in PyTorch (its explanations are torch gradients of the
twin); Captum's metrics are given our JAX explanation. Randomness is made
identical by handing the peers a perturbation function that replays exactly
the perturbations our metric draws for the same key (single-channel images,
so NHWC and NCHW flatten in the same order).

Skipped cleanly when the optional ``bench`` extra (torch, quantus, captum) is
missing.
"""

import functools
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")
captum_metrics = pytest.importorskip("captum.metrics")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks._torch_models import torch_from_flax  # noqa: E402

from rattr_jax import attribution, metrics, models  # noqa: E402
from rattr_jax.metrics import _common as C  # noqa: E402

KEY = jax.random.key(42)
B, S = 3, 6


@pytest.fixture(scope="module")
def setup():
  model = models.create_model("cnn", input_shape=(8, 8, 1), num_classes=4,
                              activation="softplus:10", seed=0)
  # conv_impl="lax": the CPU-fast custom-VJP convolution compiles ~3x slower, and these
  # tests check the metrics, not the convolution (the benchmark uses the fast one).
  fn = models.as_fn(model, conv_impl="lax")
  tm = torch_from_flax(model)
  x = jax.random.uniform(jax.random.key(1), (B, 8, 8, 1))
  logits = np.asarray(fn(x))
  t = logits.argmax(1).astype(np.int64)
  np.testing.assert_allclose(
      tm(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).detach().numpy(), logits,
      rtol=1e-4, atol=1e-5)
  return dict(model=model, fn=fn, tm=tm, x=x, xq=np.asarray(x).transpose(0, 3, 1, 2).copy(),
              t=t, explain=functools.partial(attribution.gradient, fn))


def torch_gradient(model, inputs, targets, **kwargs):
  """Quantus explain_func: the gradient of the target logit of the torch model (NCHW)."""
  xi = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
  out = model(xi)
  out[torch.arange(len(targets)), torch.as_tensor(np.asarray(targets))].sum().backward()
  return xi.grad.numpy()


def replay(d):
  """A Quantus perturb_func returning ``arr + d[s]`` at its ``s``-th call."""
  it = iter(list(d))

  def perturb(arr, indices, **kwargs):
    return arr + next(it).reshape(arr.shape[0], -1)

  return perturb


def our_deltas(epsilon, noise="uniform", num=S):
  keys = C.example_keys(KEY, B)
  return np.asarray(C.sample_noise(keys, jnp.arange(num), (8, 8, 1), jnp.float32,
                                   jnp.float32(epsilon), noise))


def run_quantus(metric, s):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return np.asarray(metric(model=s["tm"], x_batch=s["xq"], y_batch=s["t"], a_batch=None,
                             explain_func=torch_gradient, channel_first=True, device="cpu"),
                      np.float64)


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity"])
def test_sensitivity_matches_quantus(setup, name):
  s, eps = setup, 0.05
  q = run_quantus(getattr(quantus, name)(nr_samples=S, perturb_func=replay(our_deltas(eps)),
                                         disable_warnings=True), s)
  ours = (metrics.max_sensitivity if name == "MaxSensitivity" else metrics.avg_sensitivity)(
      s["fn"], attribution.gradient, s["x"], s["t"], key=KEY, num_samples=S, epsilon=eps)
  np.testing.assert_allclose(ours, q, rtol=2e-4)


def test_local_lipschitz_sampling_matches_quantus(setup):
  s, std = setup, 0.1
  q = run_quantus(quantus.LocalLipschitzEstimate(
      nr_samples=S, normalise=False, perturb_func=replay(our_deltas(std, "gaussian")),
      disable_warnings=True), s)
  ours = metrics.local_lipschitz_estimate(s["fn"], attribution.gradient, s["x"], s["t"], key=KEY,
                                          method="sampling", num_samples=S, noise="gaussian",
                                          epsilon=std)
  np.testing.assert_allclose(ours, q, rtol=2e-4)


@pytest.mark.parametrize("kind", ["input", "output", "representation"])
def test_relative_stability_matches_quantus(setup, kind):
  s, eps = setup, 0.05
  d = our_deltas(eps)
  cls = {"input": quantus.RelativeInputStability, "output": quantus.RelativeOutputStability,
         "representation": quantus.RelativeRepresentationStability}[kind]
  kw = dict(layer_names=["fc1"]) if kind == "representation" else {}
  q = run_quantus(cls(nr_samples=S, perturb_func=replay(d), disable_warnings=True, **kw), s)
  common = dict(key=KEY, num_samples=S, epsilon=eps, on_flip="nan")
  if kind == "input":
    ours = metrics.relative_input_stability(s["fn"], attribution.gradient, s["x"], s["t"], **common)
  elif kind == "output":
    ours = metrics.relative_output_stability(s["fn"], attribution.gradient, s["x"], s["t"], **common)
  else:
    rep = models.feature_fn(s["model"], "fc1")
    ours = metrics.relative_representation_stability(s["fn"], attribution.gradient, s["x"], s["t"],
                                                     representation_fn=rep, **common)
  assert np.all(np.isfinite(q))
  # Relative changes divide by near-zero attributions: compare with a looser tolerance.
  np.testing.assert_allclose(ours, q, rtol=2e-3)


def test_faithfulness_estimate_matches_quantus(setup):
  s = setup
  q = run_quantus(quantus.FaithfulnessEstimate(features_in_step=1, perturb_baseline="black",
                                               disable_warnings=True), s)
  ours = metrics.faithfulness_estimate(s["fn"], attribution.gradient, s["x"], s["t"], baseline="min",
                                       output="logit")
  np.testing.assert_allclose(ours, q, rtol=1e-3, atol=1e-4)


def test_deletion_matches_quantus_pixel_flipping(setup):
  s = setup
  # PixelFlipping's __call__ defaults to softmax=True (FaithfulnessEstimate's to False).
  q = run_quantus(quantus.PixelFlipping(features_in_step=4, perturb_baseline="black",
                                        disable_warnings=True), s)
  ours = metrics.deletion(s["fn"], attribution.gradient, s["x"], s["t"], num_steps=16, baseline="min",
                          reduce="sum", output="probability")
  np.testing.assert_allclose(np.asarray(ours.curve)[:, 1:], q, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ Captum ----
def jax_to_torch(f):
  def g(inp, target=None):
    was_tuple = isinstance(inp, tuple)
    inp = inp[0] if was_tuple else inp
    out = f(jnp.asarray(inp.detach().numpy()), jnp.asarray(target.numpy().astype(np.int32)))
    out = torch.from_numpy(np.array(out))
    return (out,) if was_tuple else out  # Captum iterates over what it passed in
  return g


def test_sensitivity_max_matches_captum(setup):
  s, eps = setup, 0.05
  d = our_deltas(eps)  # [S, B, ...]; Captum repeats examples: b0s0, b0s1, ...
  flat = np.swapaxes(d, 0, 1).reshape((B * S,) + d.shape[2:]).transpose(0, 3, 1, 2)

  def perturb(inputs, radius):
    return inputs + torch.from_numpy(flat)

  nchw = lambda f: (lambda x, t: jnp.transpose(  # noqa: E731
      f(jnp.transpose(x, (0, 2, 3, 1)), t), (0, 3, 1, 2)))
  c = captum_metrics.sensitivity_max(jax_to_torch(nchw(s["explain"])),
                                     torch.from_numpy(s["xq"]), perturb_func=perturb,
                                     perturb_radius=eps, n_perturb_samples=S,
                                     target=torch.from_numpy(s["t"]))
  ours = metrics.max_sensitivity(s["fn"], attribution.gradient, s["x"], s["t"], key=KEY, num_samples=S,
                                 epsilon=eps)
  np.testing.assert_allclose(ours, c.numpy(), rtol=2e-4)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(setup, normalize):
  s, std = setup, 0.1
  d = our_deltas(std, "gaussian", num=10)
  flat = np.swapaxes(d, 0, 1).reshape((B * 10,) + d.shape[2:]).transpose(0, 3, 1, 2)

  def perturb(inputs):
    pert = torch.from_numpy(flat)
    return pert, inputs - pert

  def forward(inp):
    return torch.from_numpy(np.array(s["fn"](jnp.asarray(inp.numpy().transpose(0, 2, 3, 1)))))

  attr = np.asarray(s["explain"](s["x"], s["t"]))
  c = captum_metrics.infidelity(forward, perturb, torch.from_numpy(s["xq"]),
                                torch.from_numpy(attr.transpose(0, 3, 1, 2).copy()),
                                target=torch.from_numpy(s["t"]), n_perturb_samples=10,
                                normalize=normalize)
  ours = metrics.infidelity(s["fn"], attribution.gradient, s["x"], s["t"], key=KEY, num_samples=10,
                            epsilon=std, normalize=normalize)
  np.testing.assert_allclose(ours, c.numpy(), rtol=1e-3, atol=1e-7)
