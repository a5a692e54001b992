"""Tests of the robust-training engine (rattr_jax.training) and `rattr train`."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rattr_jax import models, training
from rattr_jax.data import load_dataset
from rattr_jax.training import _checkpoint


@pytest.fixture(scope="module")
def digits():
  return load_dataset("digits", seed=0)


def _small(method="ce", **over):
  """A tiny MLP run on the 8x8 digits: 8 steps per epoch."""
  base = dict(model="mlp", dataset="digits", max_train=256, max_test=128, batch_size=32,
              activation="softplus:3")
  base.update(over)
  return training.preset("fast_cpu", method=method, **base)


def _params(result):
  return jax.tree_util.tree_leaves(jax.device_get(result.state.params))


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_one_epoch_ce_on_embedded_default_beats_90_percent(tmp_path):
  cfg = training.preset("fast_cpu", epochs=1)
  assert cfg.dataset == "mnist_embedded" and cfg.model == "cnn"
  res = training.train(cfg, out_dir=str(tmp_path), progress=False)
  assert res.status == "completed"
  assert res.history[-1]["test_accuracy"] > 0.90
  log = json.loads((tmp_path / "log.json").read_text())
  assert len(log["epochs"]) == 1 and log["status"] == "completed"
  assert len(log["steps"]["loss"]) == 4000 // 32
  assert (tmp_path / "curves.png").stat().st_size > 10_000
  assert _checkpoint.Checkpointer(str(tmp_path)).best.latest_step() == 125


def test_resume_after_kill_gives_identical_parameters(tmp_path, digits):
  cfg = _small("gradient_alignment", epochs=3, **{"optimizer.schedule": "cosine",
                                                  "optimizer.clip_norm": 1.0})
  full = training.train(cfg, dataset=digits, out_dir=str(tmp_path / "a"), progress=False)

  class Kill(Exception):
    pass

  def kill_after_two(entry):
    if entry["epoch"] == 2:
      raise Kill()

  with pytest.raises(Kill):
    training.train(cfg, dataset=digits, out_dir=str(tmp_path / "b"), progress=False,
                   callback=kill_after_two)
  resumed = training.train(cfg, dataset=digits, out_dir=str(tmp_path / "b"), resume=True,
                           progress=False)
  assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
  assert int(resumed.state.step) == int(full.state.step) == 24
  for a, b in zip(_params(full), _params(resumed)):
    np.testing.assert_array_equal(a, b)
  assert resumed.history[-1]["test_accuracy"] == full.history[-1]["test_accuracy"]
  # A different config cannot resume from this directory.
  with pytest.raises(ValueError, match="optimizer.learning_rate"):
    training.train(cfg.replace(**{"optimizer.learning_rate": 0.1}), dataset=digits,
                   out_dir=str(tmp_path / "b"), resume=True, progress=False)


def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path, digits):
  cfg = _small("ce", epochs=3)

  def nan_after_11(ctx, batch, key):
    return jnp.where(ctx.step >= 11, jnp.nan, 0.0), {}

  terms = [training.cross_entropy_term(), training.LossTerm("boom", nan_after_11, 1.0)]
  res = training.train(cfg, dataset=digits, terms=terms, out_dir=str(tmp_path), progress=False)
  assert res.status == "nan"
  assert "Non-finite loss" in res.message and "global step 12" in res.message
  assert int(res.state.step) == 11  # the bad update was not applied, later steps were no-ops
  assert all(np.all(np.isfinite(a)) for a in _params(res))
  assert [h["epoch"] for h in res.history] == [1]
  log = json.loads((tmp_path / "log.json").read_text())
  assert log["status"] == "nan" and "Non-finite" in log["message"]
  ck = _checkpoint.Checkpointer(str(tmp_path))
  assert ck.latest_step() == 8
  state, meta = ck.restore(res.state)
  assert meta["epoch"] == 0 and int(state.step) == 8
  assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(state.params))


def test_cli_train_writes_outputs_and_resumes(tmp_path):
  from rattr_jax.cli import main
  out = str(tmp_path / "run")
  args = ["train", "--model", "mlp", "--dataset", "digits", "--method", "pgd", "--num-steps", "2",
          "--max-train", "128", "--max-test", "64", "--out", out, "--no-progress"]
  assert main(args + ["--epochs", "1"]) == 0
  for f in ("log.json", "config.json", "curves.png"):
    assert os.path.exists(os.path.join(out, f)), f
  assert main(args + ["--epochs", "2", "--resume"]) == 0
  log = json.loads(open(os.path.join(out, "log.json")).read())
  assert [e["epoch"] for e in log["epochs"]] == [1, 2]
  assert [t["term"] for t in log["config"]["terms"]] == ["pgd"]
  assert log["config"]["terms"][0]["num_steps"] == 2 and "train_adv_acc" in log["epochs"][0]
  assert main(["train", "--method", "activation_sensitivity", "--layers", "nope", "--model",
               "mlp", "--dataset", "digits", "--out", str(tmp_path / "x")]) == 2


# --------------------------------------------------------------------------- engine


def test_every_method_trains(digits):
  """All methods' terms in one objective (one compilation): finite, non-negative, all params move."""
  import dataclasses
  model = models.create_model("mlp", input_shape=(8, 8, 1), num_classes=10,
                              activation="softplus:3", hidden=(16,))
  terms = []
  params = {"activation_sensitivity": dict(lam=1.0, layers=("hidden.0",), neuron_weights=True,
                                           epsilon=0.1),
            "pgd": dict(epsilon=0.1, num_steps=2), "trades": dict(epsilon=0.1, num_steps=2),
            "hessian_norm": dict(hessian_mode="forward_over_reverse")}
  for method in training.METHODS:
    for t in training.method_terms(method, **params.get(method, {})):
      if t.name != "ce" or method == "ce":
        terms.append(dataclasses.replace(t.loss_term(), name=f"{method}/{t.name}"))
  assert len(terms) == len(training.METHODS)
  x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
  ts = training.make_train_step(model, optax.adam(1e-2), terms, refresh_example=(x, y))
  state = ts.init(0)
  p0 = jax.tree_util.tree_leaves(jax.device_get(state.params))
  state = ts.refresh(state, x, y)
  np.testing.assert_allclose(
      float(jnp.mean(state.aux["activation_sensitivity/activation_sensitivity"][0])), 1.0,
      rtol=1e-5)
  state, met = ts.run(state, x, y, jnp.arange(64).reshape(2, 32))
  assert int(state.step) == 2 and bool(np.all(met["finite"]))
  for t in terms:
    assert np.all(np.isfinite(met[t.name])) and np.all(met[t.name] >= 0), t.name
    assert np.all(met[t.name] > 0), t.name
  total = sum(t.weight * met[t.name] for t in terms)
  np.testing.assert_allclose(met["loss"], total, rtol=1e-5)
  changed = [not np.array_equal(a, b) for a, b in zip(p0, jax.tree_util.tree_leaves(state.params))]
  assert all(changed)


class _BNNet(nnx.Module):
  def __init__(self, rngs):
    self.fc = nnx.Linear(64, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(16, 10, rngs=rngs)
    self.activation = models.Activation.softplus(3.0)

  def __call__(self, x):
    return self.head(self.activation(self.bn(self.fc(x.reshape(x.shape[0], -1)))))


def test_batchnorm_statistics_updated_once_by_the_clean_pass(digits):
  """Regularizer passes (g(x), g(x + delta)) must not touch the running statistics."""
  model = _BNNet(nnx.Rngs(0))
  x, y = jnp.asarray(digits.x_train[:32]), jnp.asarray(digits.y_train[:32])
  h = model.fc(x.reshape(32, -1))
  expected_mean = 0.1 * jnp.mean(h, axis=0)  # momentum 0.9 from a zero initial mean
  expected_var = 0.9 + 0.1 * jnp.var(h, axis=0)
  for method, params in (("gradient_alignment", {}), ("trades", {"num_steps": 2})):
    terms = training.method_terms(method, epsilon=0.1, **params)
    ts = training.make_train_step(model, optax.sgd(0.0), terms)
    state, met = ts.step(ts.init(0), x, y)
    assert bool(met["finite"])
    np.testing.assert_allclose(state.rest["bn"]["mean"][...], expected_mean, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(state.rest["bn"]["var"][...], expected_var, rtol=1e-5)
  # The clean logits of the step are training-mode logits (batch statistics).
  ts = training.make_train_step(model, optax.sgd(0.0), [training.cross_entropy_term()])
  _, met = ts.step(ts.init(0), x, y)
  m2 = nnx.merge(*nnx.split(model))
  m2.train()
  ce = optax.softmax_cross_entropy_with_integer_labels(m2(x), y).mean()
  np.testing.assert_allclose(met["ce"], ce, rtol=1e-5)


def test_schedules_and_clipping():
  o = training.OptimizerConfig(name="adam", learning_rate=0.1, schedule="multistep",
                               milestones=(2, 3), gamma=0.1, clip_norm=0.5)
  tx, sched = training.make_optimizer(o, steps_per_epoch=10, epochs=4)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 19, 20, 29, 30)],
                             [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)
  _, cos = training.make_optimizer(training.OptimizerConfig(schedule="cosine", learning_rate=1.0),
                                   steps_per_epoch=10, epochs=2)
  np.testing.assert_allclose([float(cos(0)), float(cos(10)), float(cos(20))], [1.0, 0.5, 0.0],
                             atol=1e-6)
  sgd = training.make_optimizer(training.OptimizerConfig(name="sgd", learning_rate=1.0,
                                                         momentum=0.0, clip_norm=0.5), 1, 1)[0]
  g = {"w": jnp.array([3.0, 4.0])}
  upd, _ = sgd.update(g, sgd.init(g), g)
  np.testing.assert_allclose(upd["w"], [-0.3, -0.4], rtol=1e-6)


# --------------------------------------------------------------------------- bad configs


def test_bad_configs_raise_clear_errors(digits):
  with pytest.raises(ValueError, match="Unknown `method` 'bogus'"):
    training.preset("fast_cpu", method="bogus")
  with pytest.raises(ValueError, match="Unknown term 'bogus'; valid terms: .*gradient_alignment"):
    training.make_term("bogus")
  with pytest.raises(ValueError, match="`terms` must be a non-empty tuple"):
    training.validate(training.TrainConfig(terms=()))
  with pytest.raises(ValueError, match="distinct names"):
    training.validate(training.TrainConfig(terms=(training.CrossEntropy(),) * 2))
  for method, field in (("hessian_norm", "lam"), ("gradient_alignment", "lambda_l2"),
                        ("gradient_alignment", "lambda_cos"), ("gradient_alignment", "epsilon"),
                        ("trades", "beta")):
    with pytest.raises(ValueError, match=f"`{method}.{field}` must be a finite non-negative"):
      training.preset("fast_cpu", method=method, **{f"{method}.{field}": -1.0})
  with pytest.raises(ValueError, match="Unknown config field"):
    training.preset("fast_cpu", method="gradient_alignment", **{"gradient_alignment.lambda": 1.0})
  with pytest.raises(ValueError, match="neither `optimizer` nor a term of the objective"):
    training.preset("fast_cpu", **{"pgd.epsilon": 0.1})
  with pytest.raises(ValueError, match="`lam` is not a hyper-parameter of the objective"):
    training.method_terms("pgd", lam=1.0)
  with pytest.raises(ValueError, match="optimizer.learning_rate"):
    training.preset("fast_cpu", **{"optimizer.learning_rate": 0.0})
  with pytest.raises(ValueError, match="preset"):
    training.preset("nope")
  with pytest.raises(ValueError, match="weight"):
    training.LossTerm("x", lambda *a: (0.0, {}), -1.0)
  with pytest.raises(ValueError, match=r"Unknown `layer` 'fc9'.*hidden\.0"):
    training.train(_small("activation_sensitivity", **{"activation_sensitivity.layers": ("fc9",)}),
                   dataset=digits, progress=False)
  with pytest.raises(ValueError, match="batch_size"):
    training.train(_small(batch_size=4096), dataset=digits, progress=False)
  with pytest.raises(ValueError, match="unique"):
    training.make_train_step(models.create_model("mlp", input_shape=(4,), num_classes=2),
                             optax.sgd(0.1), [training.cross_entropy_term()] * 2)


def test_config_roundtrip_and_presets():
  for name, cfg in training.PRESETS.items():
    training.validate(cfg)
    assert training.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name
  aga = training.PRESETS["aga_cifar_lenet"]
  assert aga.objective == "ce+gradient_alignment"
  ga = aga.term("gradient_alignment")
  assert (ga.lambda_l2, ga.lambda_cos, aga.activation) == (0.01, 1.0, "softplus:3")
  assert abs(ga.epsilon - 4 / 255) < 1e-12 and aga.optimizer.learning_rate == 1e-3
  assert training.PRESETS["hessian_cifar_lenet"].term("hessian_norm").lam == 1e-3
  pgd = training.PRESETS["pgd_cifar_lenet"].term("pgd")
  assert abs(pgd.epsilon - 8 / 255) < 1e-12 and pgd.num_steps == 10
  # --method on a CIFAR preset keeps the preset's radius; fast_cpu uses MNIST-scale settings.
  assert training.preset("aga_cifar_lenet", method="pgd").term("pgd").epsilon == ga.epsilon
  assert training.preset("fast_cpu", method="pgd").term("pgd").epsilon == 0.1


def test_train_many_equals_sequential_runs_of_each_seed():
  """S models as one vmapped program = S separate `TrainStep.run`s on the same data orders
  (float32; tolerance 1e-5 relative for batched-matmul summation order)."""
  import optax

  from rattr_jax import models
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (40, 6, 6, 1)).astype(np.float32)
  y = rng.integers(0, 3, 40).astype(np.int32)
  terms = training.method_terms("ce")
  seeds = [3, 7, 11]
  build = lambda s: models.create_model("cnn", input_shape=(8, 8, 1), num_classes=3, seed=s,
                                        widths=(2, 3, 5), activation="softplus:3")
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  res = training.train_many([build(s) for s in seeds], optax.adam(1e-2), terms, x, y,
                            epochs=2, batch_size=8, seeds=seeds)
  assert res.losses.shape == (3, 2) and res.orders.shape == (3, 2, 5, 8)
  assert len({tuple(o.ravel()) for o in res.orders[:, 0]}) == 3  # different data orders
  for i, s in enumerate(seeds):
    ts = training.make_train_step(build(s), optax.adam(1e-2), terms, seed=s)
    st = ts.init(s)
    for e in range(2):
      st, met = ts.run(st, jnp.asarray(x), jnp.asarray(y), jnp.asarray(res.orders[i, e]))
      np.testing.assert_allclose(res.losses[i, e], np.mean(met["loss"]), rtol=1e-5)
    ours = jax.tree_util.tree_map(lambda a: a[i], res.state.params)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(st.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree_util.tree_leaves(res.state.params)[0][0],
                         jax.tree_util.tree_leaves(res.state.params)[0][1])
  fn = models.as_fn(res.model(1))
  assert fn(jnp.asarray(x[:2])).shape == (2, 3)
  with pytest.raises(ValueError, match="`seeds`"):
    training.train_many([build(0)], optax.adam(1e-2), terms, x, y, epochs=1, batch_size=8,
                        seeds=[1, 2])


def test_fit_on_epoch_reports_every_step_and_stop_on_nan_raises(digits):
  x, y = np.asarray(digits.x_train[:96]), np.asarray(digits.y_train[:96])
  m0 = models.create_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0,
                           widths=(16,))
  seen = []

  def on_epoch(e, met, model):
    seen.append((e, {k: np.asarray(v).shape for k, v in met.items()}, models.as_fn(model())(x)))

  out = training.fit(m0, x, y, epochs=2, batch_size=32, on_epoch=on_epoch)
  assert [s[0] for s in seen] == [0, 1]
  assert seen[0][1]["loss"] == (3,) and seen[0][1]["acc"] == (3,)  # one value per step
  np.testing.assert_array_equal(seen[-1][2], models.as_fn(out)(x))  # model() = trained so far
  assert not np.array_equal(seen[0][2], seen[1][2])
  # Without the callback: the same parameters.
  again = training.fit(m0, x, y, epochs=2, batch_size=32)
  np.testing.assert_array_equal(models.as_fn(again)(x), models.as_fn(out)(x))
  bad = x.copy()
  bad[40] = np.nan  # second minibatch of some epoch
  with pytest.raises(FloatingPointError, match=r"epoch 0, step \d"):
    training.fit(m0, bad, y, epochs=1, batch_size=32, stop_on_nan=True)
  training.fit(m0, bad, y, epochs=1, batch_size=32)  # default: goes on (the step is skipped)
