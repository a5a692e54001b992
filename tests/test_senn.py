"""Self-explaining neural networks: model, robustness loss, training, stability, faithfulness."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rattr_jax.data import Dataset
from rattr_jax.models import as_fn
from rattr_jax import senn as S
from rattr_jax.senn import _losses as L


def _to64(model):
  if isinstance(model.conceptizer, S.ConvConceptizer):  # no dead (constant-0) concept
    model.conceptizer.linear.bias[...] = jnp.full((1,), 0.3)
  g, s = nnx.split(model)
  return nnx.merge(g, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), s))


def _constant_theta(model):
  """Zeroes the parametrizer's last kernel: theta(x) = its bias, a constant (a linear model)."""
  head = model.parametrizer.head
  head.kernel[...] = jnp.zeros_like(head.kernel[...])
  head.bias[...] = jax.random.normal(jax.random.key(3), head.bias[...].shape, head.bias.dtype)
  return model


TINY = [  # (create_senn kwargs, input shape, num classes)
    (dict(conceptizer="autoencoder", parametrizer="lenet", num_concepts=3, conv_impl="lax"),
     (16, 16, 1), 4),
    (dict(hidden=(6, 5)), (5,), 3),
    (dict(hidden=(6,), aggregator="sigmoid"), (4,), 2),
]


def _explicit_residual(model, x, convention):
  """``J_out - theta^T J_h`` with full Jacobians (reverse mode; fast convs have no jvp)."""
  g, s = nnx.split(model)
  return _explicit_jit(g, s, x, convention)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _explicit_jit(g, s, x, convention):
  model = nnx.merge(g, s)

  def out(xx):
    h, _ = model.concepts(xx)
    s = model.aggregator.scores(model.relevances(xx), h)
    return s if convention == "clean" else model.aggregator.output(s)

  jf = jax.vmap(lambda xi: jax.jacrev(lambda z: out(z[None])[0])(xi))(x)            # [B, T, *F]
  jh = jax.vmap(lambda xi: jax.jacrev(lambda z: model.concepts(z[None])[0][0])(xi))(x)  # [B,k,*F]
  theta = model.relevances(x)
  return jf - jnp.einsum("bkt,bk...->bt...", theta, jh)


@pytest.mark.parametrize("kw,shape,c", TINY)
def test_cheap_residual_equals_explicit_jacobians(x64, kw, shape, c):
  """The J_h-free residual (both conventions) equals grad f - theta^T J_h in float64.

  The image case is the paper's autoencoder + LeNet parametrizer at 16x16 (plain lax
  convolutions: the identity does not depend on the convolution's autodiff rule, and they
  compile faster).
  """
  model = _to64(S.create_senn(input_shape=shape, num_classes=c, **kw))
  x = jax.random.uniform(jax.random.key(0), (3,) + shape, jnp.float64)
  for convention in ("clean", "original"):
    r, theta, h = L.senn_robustness_residual(model, x, convention=convention)
    want = _explicit_residual(model, x, convention)
    assert r.dtype == jnp.float64 and r.shape == want.shape
    assert float(jnp.min(jnp.abs(h))) > 1e-3  # no dead concept
    assert float(jnp.max(jnp.abs(want))) > 1e-3
    np.testing.assert_allclose(r, want, rtol=1e-10, atol=1e-12)


class _TinyConceptizer(nnx.Module):
  """A learnable conceptizer small enough for nested full Jacobians: tanh(W x), x_hat = V h."""

  def __init__(self, d, k):
    self.enc = nnx.Linear(d, k, rngs=nnx.Rngs(0))
    self.dec = nnx.Linear(k, d, rngs=nnx.Rngs(1))
    self.num_concepts = k

  def __call__(self, x):
    h = jnp.tanh(self.enc(x))
    return h, self.dec(h)


def test_parameter_gradient_equals_explicit_formula(x64):
  """Parameter gradients flow through h's value and theta exactly as in the full formula."""
  par = S.MLPParametrizer(6, 3, 4, hidden=(5,), rngs=nnx.Rngs(2))
  model = _to64(S.SENN(_TinyConceptizer(6, 3), par, num_classes=4))
  x = jax.random.uniform(jax.random.key(1), (4, 6), jnp.float64)
  g, s = nnx.split(model)

  def cheap(st):
    return L.senn_robustness_loss(nnx.merge(g, st), x)

  def explicit(st):
    r = _explicit_residual(nnx.merge(g, st), x, "clean")
    return jnp.mean(jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1))

  np.testing.assert_allclose(cheap(s), explicit(s), rtol=1e-12)
  gc, ge = jax.grad(cheap)(s), jax.grad(explicit)(s)
  enc = jax.tree_util.tree_leaves(gc["conceptizer"]["enc"])
  assert max(float(jnp.max(jnp.abs(a))) for a in enc) > 1e-6  # h's parameters get gradient
  for a, b in zip(jax.tree_util.tree_leaves(gc), jax.tree_util.tree_leaves(ge)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)


def test_total_loss_is_weighted_sum_and_jit_equals_eager():
  par = S.MLPParametrizer(6, 3, 4, hidden=(5,), rngs=nnx.Rngs(2))
  model = S.SENN(_TinyConceptizer(6, 3), par, num_classes=4)
  x = jax.random.uniform(jax.random.key(1), (5, 6))
  y = jnp.array([0, 1, 2, 3, 0])
  for conv in ("clean", "original"):
    total, out = L.senn_loss(model, x, y, lambda_robustness=0.3, lambda_reconstruction=2.0,
                             lambda_sparsity=0.1, convention=conv)
    t = out.terms
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(model(x)), y[:, None], 1))
    h, x_hat = model.concepts(x)
    l1 = jnp.sum(jnp.abs(h)) / (1 if conv == "original" else 5)
    np.testing.assert_allclose(t.prediction, ce, rtol=1e-5)
    np.testing.assert_allclose(t.robustness, L.senn_robustness_loss(model, x, convention=conv),
                               rtol=1e-5)
    np.testing.assert_allclose(t.reconstruction, jnp.mean((x_hat - x) ** 2), rtol=1e-5)
    np.testing.assert_allclose(t.sparsity, l1, rtol=1e-5)
    np.testing.assert_allclose(total, ce + 0.3 * t.robustness + 2.0 * t.reconstruction
                               + 0.1 * l1, rtol=1e-5)
    eager, _ = L.senn_loss_impl(model, x, y, lambda_robustness=0.3, lambda_reconstruction=2.0,
                                lambda_sparsity=0.1, convention=conv)
    np.testing.assert_allclose(total, eager, rtol=1e-5)


@pytest.mark.parametrize("aggregator,c", [("softmax", 3), ("sigmoid", 2)])
def test_constant_theta_has_zero_robustness_loss(aggregator, c):
  model = _constant_theta(S.create_senn(input_shape=(6,), num_classes=c, hidden=(5,),
                                        aggregator=aggregator))
  x = jax.random.uniform(jax.random.key(0), (8, 6))
  g, s = nnx.split(model)
  val, grads = jax.value_and_grad(lambda st: L.senn_robustness_loss(nnx.merge(g, st), x))(s)
  assert float(val) == 0.0
  assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(grads))
  # The original convention differentiates log-softmax / sigmoid: non-zero even here.
  assert float(L.senn_robustness_loss(model, x, convention="original")) > 1e-3


SHAPES = TINY + [
    (dict(widths=(4, 8), hidden=(8,)), (32, 32, 3), 10),  # VGG + AE, CIFAR shape
]


@pytest.mark.parametrize("kw,shape,c", SHAPES)
def test_logits_equal_sum_theta_h(kw, shape, c):
  model = S.create_senn(input_shape=shape, num_classes=c, **kw)
  x = jax.random.uniform(jax.random.key(2), (4,) + shape)
  g, st = nnx.split(model)
  logits, e = jax.jit(lambda s_, x_: nnx.merge(g, s_)(x_, return_explanation=True))(st, x)
  z = jnp.sum(e.theta * e.h[:, :, None], axis=1)
  want = z if model.aggregator.kind == "softmax" else jnp.concatenate([0 * z, z], 1)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(as_fn(model))(x), logits, rtol=1e-5, atol=1e-6)
  assert e.x_hat.shape == x.shape
  if model.aggregator.kind == "sigmoid":  # softmax of [0, z] is the sigmoid
    np.testing.assert_allclose(jax.nn.softmax(logits)[:, 1], jax.nn.sigmoid(z[:, 0]), rtol=1e-5)
  if isinstance(model.conceptizer, S.IdentityConceptizer):  # ends with the bias 1
    np.testing.assert_array_equal(e.h[:, -1], 1.0)
    np.testing.assert_array_equal(e.h[:, :-1], x.reshape(4, -1))


def test_projection_estimate_is_unbiased(x64):
  model = _to64(S.create_senn(input_shape=(7,), num_classes=4, hidden=(6,)))
  x = jax.random.uniform(jax.random.key(0), (5, 7), jnp.float64)
  exact = float(L.senn_robustness_loss(model, x))
  est = jax.vmap(lambda k: L.senn_robustness_loss(model, x, num_projections=4, key=k))(
      jax.random.split(jax.random.key(1), 4000))
  assert abs(float(jnp.mean(est)) - exact) < 4 * float(jnp.std(est)) / np.sqrt(4000)
  assert abs(float(jnp.mean(est)) / exact - 1) < 0.05


def _linear_task(n=600, d=6, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=d)
  x = rng.uniform(size=(n, d)).astype(np.float32)
  y = (x @ w > np.median(x @ w)).astype(np.int32)
  k = n * 3 // 4
  return Dataset(x[:k], y[:k], x[k:], y[k:], 2, "linear", "synthetic")


@pytest.fixture(scope="module")
def linear_senn():
  data = _linear_task()
  cfg = S.SENNConfig(dataset="linear", aggregator="sigmoid", hidden=(8,), lambda_robustness=0.1,
                     learning_rate=1e-2, batch_size=32, epochs=30)
  model, hist, _ = S.train_senn(cfg, data=data)
  return model, hist, data


def test_faithfulness_identity_concepts_linear_task(linear_senn):
  model, hist, data = linear_senn
  assert hist.val_accuracy[-1] > 0.9
  x = jnp.asarray(data.x_test[:64])
  # Robust training on a linear task makes theta nearly constant, so removing feature i
  # (x_i -> 0, model re-run) changes the logit by theta_i x_i: faithfulness ~ 1.
  feat = S.senn_faithfulness(model, x, removal="feature", attribution="contribution",
                             output="logit")
  assert float(jnp.mean(feat)) > 0.99
  # theta alone is ~1 faithful when all concepts have the same value (x = 1) ...
  ones = S.senn_faithfulness(model, jnp.ones_like(x[:8]), output="logit")
  assert float(jnp.min(ones)) > 0.99
  # probability drops: the sigmoid bends large removals, so lower but still high
  ones_p = S.senn_faithfulness(model, jnp.ones_like(x[:8]))
  assert float(jnp.mean(ones_p)) > 0.7
  # ... and positive in general (the paper's metric: probability drop vs theta).
  assert float(jnp.mean(S.senn_faithfulness(model, x))) > 0.5


def test_faithfulness_of_constant_theta_is_exact():
  model = _constant_theta(S.create_senn(input_shape=(6,), num_classes=2, hidden=(5,),
                                        aggregator="sigmoid"))
  x = jax.random.uniform(jax.random.key(0), (16, 6))
  for output in ("probability", "logit"):
    by_concept = S.senn_faithfulness(model, x, attribution="contribution", output=output)
    by_feature = S.senn_faithfulness(model, x, removal="feature", attribution="contribution",
                                     output=output)
    np.testing.assert_allclose(by_concept, by_feature, rtol=1e-4)
  np.testing.assert_allclose(by_concept, 1.0, rtol=1e-5)   # logit drop == theta_i h_i


def test_stability_of_constant_theta_is_zero_and_matches_direct_ratio():
  model = _constant_theta(S.create_senn(input_shape=(5,), num_classes=3, hidden=(4,)))
  x = jax.random.uniform(jax.random.key(0), (4, 5))
  for den in ("concepts", "input"):
    v = S.senn_stability(model, x, key=jax.random.key(0), epsilon=0.1, num_steps=3,
                         denominator=den)
    np.testing.assert_allclose(v, 0.0, atol=1e-6)
  # A non-constant model: the estimate is a max over points, so it bounds any sampled ratio.
  model = S.create_senn(input_shape=(5,), num_classes=3, hidden=(4,))
  pred = jnp.argmax(model(x), -1)
  est = S.senn_stability(model, x, key=jax.random.key(1), epsilon=0.1, num_steps=10,
                         num_restarts=4, input_range=None)
  d = 0.1 * jax.random.normal(jax.random.key(2), x.shape) / np.sqrt(5)
  th = lambda z: jnp.take_along_axis(model.relevances(z), pred[:, None, None], 2)[:, :-1, 0]
  ratio = jnp.linalg.norm(th(x + d) - th(x), axis=1) / jnp.linalg.norm(d, axis=1)
  assert bool(jnp.all(est >= 0.9 * ratio))


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="num_concepts"):
    S.create_senn(input_shape=(28, 28, 1), num_classes=10, num_concepts=0)
  with pytest.raises(ValueError, match="num_concepts"):
    S.SENNConfig(num_concepts=-1)
  with pytest.raises(ValueError, match="conceptizer"):
    S.create_senn(input_shape=(28, 28, 1), num_classes=10, conceptizer="pca")
  with pytest.raises(ValueError, match="conceptizer"):
    S.SENNConfig(conceptizer="pca")
  with pytest.raises(ValueError, match="lambda_robustness"):
    S.SENNConfig(lambda_robustness=-1e-3)
  model = S.create_senn(input_shape=(4,), num_classes=3)
  x, y = jnp.ones((2, 4)), jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match="lambda_robustness"):
    L.senn_loss(model, x, y, lambda_robustness=-1.0)
  with pytest.raises(ValueError, match="convention"):
    L.senn_robustness_loss(model, x, convention="torch")
  with pytest.raises(ValueError, match="num_projections"):
    L.senn_robustness_loss(model, x, num_projections=0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="aggregator"):
    S.create_senn(input_shape=(4,), num_classes=3, aggregator="sigmoid")
  with pytest.raises(ValueError, match="autoencoder"):
    S.create_senn(input_shape=(30,), num_classes=2, conceptizer="autoencoder")
  with pytest.raises(ValueError, match="side"):
    S.create_senn(input_shape=(18, 18, 1), num_classes=2)
  with pytest.raises(ValueError, match="feature"):
    S.senn_faithfulness(S.create_senn(input_shape=(16, 16, 1), num_classes=2),
                        jnp.ones((1, 16, 16, 1)), removal="feature")
  with pytest.raises(ValueError, match="preset"):
    S.senn_preset("compas")


def test_robustness_loss_compiles_once_per_architecture():
  x = jax.random.uniform(jax.random.key(0), (4, 6))
  L._robustness_jit.clear_cache()
  for seed in range(3):  # new weights, same architecture: no retrace
    m = S.create_senn(input_shape=(6,), num_classes=3, hidden=(5,), seed=seed)
    L.senn_robustness_loss(m, x)
  assert L._robustness_jit._cache_size() == 1


@pytest.fixture(scope="module")
def cancer():
  from rattr_jax.data import load_dataset
  return load_dataset("breast_cancer")


@pytest.mark.slow
def test_stability_improves_with_lambda_up_to_1e2(cancer):
  x = jnp.asarray(cancer.x_test[:48])
  stab = []
  for lam in (1e-4, 1e-3, 1e-2):
    model, hist, _ = S.train_senn(S.senn_preset("breast_cancer", lambda_robustness=lam,
                                                epochs=30), data=cancer)
    assert hist.val_accuracy[-1] > 0.93
    v = S.senn_stability(model, x, key=jax.random.key(0), epsilon=0.27, num_steps=10)
    stab.append(float(jnp.mean(v)))
  assert stab[0] > stab[1] > stab[2], stab


@pytest.mark.slow
def test_short_mnist_training_small_lambda_above_95():
  """Embedded MNIST (4,000/1,000), lambda 1e-4, 3 epochs; one Gaussian probe of the residual.

  The probe estimate is unbiased for the exact robustness loss
  (`test_projection_estimate_is_unbiased`) and 10x cheaper on 10 classes.
  """
  cfg = S.senn_preset("mnist_fast", lambda_robustness=1e-4, num_projections=1)
  model, hist, data = S.train_senn(cfg)
  assert hist.val_accuracy[-1] > 0.95, hist.val_accuracy
  stats = S.concept_statistics(model, data.x_test[:500])
  assert stats["concept_variance"].shape == (5,)
  assert stats["reconstruction"] < 0.1


def test_engine_trains_senn_with_checkpoints(tmp_path, cancer):
  from rattr_jax import training
  S.register_senn_training()
  cfg = training.TrainConfig(model="senn", dataset="breast_cancer", epochs=2, batch_size=64,
                             terms=(S.SENNObjective(lambda_robustness=1e-2),),
                             optimizer=training.OptimizerConfig(learning_rate=1e-2))
  res = training.train(cfg, dataset=cancer, out_dir=str(tmp_path), progress=False)
  assert res.status == "completed"
  assert isinstance(res.model, S.SENN)
  assert res.history[-1]["test_accuracy"] > 0.8
  assert "train_senn_robustness" in res.history[-1]
  assert (tmp_path / "log.json").exists() and (tmp_path / "checkpoints").exists()


def test_cli_train_model_senn(tmp_path):
  from rattr_jax.cli import main
  out = tmp_path / "run"
  code = main(["train", "--model", "senn", "--dataset", "breast_cancer", "--epochs", "1",
               "--batch-size", "64", "--lam", "0.01", "--lr", "0.01", "--no-progress",
               "--out", str(out)])
  assert code == 0
  assert (out / "log.json").exists() and (out / "curves.png").exists()
