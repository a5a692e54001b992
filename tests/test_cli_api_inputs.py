"""Bad input to the public API the CLI builds on: a one-line ValueError naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import attribution, models, viz
from rattr_jax.data import load_dataset


@pytest.mark.parametrize("kwargs, arg", [
    (dict(num_classes=0), "num_classes"), (dict(num_classes=-1), "num_classes"),
    (dict(num_classes=2.5), "num_classes"), (dict(num_classes=True), "num_classes"),
    (dict(input_shape=(0, 28, 1)), "input_shape"), (dict(input_shape=(28, 28, 0)), "input_shape"),
    (dict(input_shape=()), "input_shape"), (dict(input_shape=None), "input_shape"),
    (dict(input_shape=(28.5, 28, 1)), "input_shape"), (dict(seed=-1), "seed"),
    (dict(activation="softplus:abc"), "activation"), (dict(activation="gelu"), "activation"),
    (dict(name="vgg"), "name"),
])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_create_model_rejects_bad_arguments(name, kwargs, arg):
  args = dict(name=name, input_shape=(28, 28, 1), num_classes=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=f"`{arg}`") as e:
    models.create_model(args.pop("name"), **args)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, shape", [("mlp", (28, 28, 1)), ("cnn", (28, 28, 1)),
                                         ("lenet", (32, 32, 3))])
def test_float64_input_with_x64(name, shape, x64):
  """With x64 on, float64 inputs give float64 logits and gradients (and float32 inputs work)."""
  model = models.create_model(name, input_shape=shape, num_classes=10)
  fn = models.as_fn(model)
  x = np.random.default_rng(0).random((2,) + shape)
  y = fn(jnp.asarray(x, jnp.float64))
  assert y.dtype == jnp.float64
  g = attribution.gradient(fn, jnp.asarray(x, jnp.float64), jnp.array([1, 2]))
  assert g.dtype == jnp.float64 and g.shape == x.shape
  y32 = fn(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(y32), np.asarray(y), rtol=1e-4, atol=1e-5)
  leaves = jax.tree_util.tree_leaves(model)
  assert all(l.dtype == jnp.float32 for l in leaves if hasattr(l, "dtype")
             and jnp.issubdtype(l.dtype, jnp.floating))


@pytest.mark.parametrize("kwargs, arg", [
    (dict(data_dir="/no/such/dir"), "data_dir"), (dict(max_train=0), "max_train"),
    (dict(max_train=-5), "max_train"), (dict(max_train=2.5), "max_train"),
    (dict(max_test=0), "max_test"), (dict(seed=-1), "seed"), (dict(name="imagenet"), "name"),
])
def test_load_dataset_rejects_bad_arguments(kwargs, arg):
  args = dict(name="iris")
  args.update(kwargs)
  with pytest.raises(ValueError, match=f"`{arg}`"):
    load_dataset(args.pop("name"), **args)


def test_tabular_datasets_carry_their_feature_names():
  from sklearn.datasets import load_breast_cancer
  d = load_dataset("breast_cancer")
  assert d.feature_names == tuple(load_breast_cancer().feature_names)
  assert len(d.feature_names) == d.x_train.shape[1]
  assert load_dataset("digits").feature_names is None


def test_feature_bars_checks_names(tmp_path):
  with pytest.raises(ValueError, match="`feature_names`"):
    viz.feature_bars({"g": np.ones((1, 3))}, tmp_path / "f.png", feature_names=["a", "b"])
  p = viz.feature_bars({"g": np.array([[1.0, -2.0, 0.5]])}, tmp_path / "f.png",
                       feature_names=["a", "b", "c"])
  assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_senn_is_an_attribute():
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-c", "import rattr_jax; print(rattr_jax.senn.SENN); "
                      "print(hasattr(rattr_jax.models, 'senn'))"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "SENN" in r.stdout and r.stdout.split()[-1] == "False"


@pytest.mark.parametrize("name", ["spearman", "pearson", "kendall_tau"])
def test_constant_map_correlation_is_nan_everywhere(name):
  """One convention for a constant map: NaN (undefined, as scipy), flagged by isnan."""
  import scipy.stats
  from rattr_jax import metrics
  f = getattr(metrics, name)
  ref = {"spearman": scipy.stats.spearmanr, "pearson": scipy.stats.pearsonr,
         "kendall_tau": scipy.stats.kendalltau}[name]
  rng = np.random.default_rng(0)
  m = rng.random((3, 12, 12)).astype(np.float32)
  const = np.full((12, 12), 0.1, np.float32)  # its float32 mean is not exactly 0.1
  a = np.stack([const, m[1], const])
  b = np.stack([m[0], const, const])
  out = np.asarray(f(a, b))
  assert np.all(np.isnan(out)), out
  near = const.copy()
  near[3, 4] = 0.2  # one pixel differs: defined, and equal to scipy
  got = np.asarray(f(near[None], m[2][None]))[0]
  want = ref(near.ravel().astype(np.float64), m[2].ravel().astype(np.float64))[0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  mixed = np.asarray(f(np.stack([m[0], const]), np.stack([m[1], m[2]])))
  assert np.isfinite(mixed[0]) and np.isnan(mixed[1])
