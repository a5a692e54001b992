"""Training objectives built from registered terms, and the README's "Extending rattr_jax".

The README section's three examples (a training regularizer, an attack, a
metric) are executed from the README itself and checked here. The regularizer
is an L2 penalty on the input gradient of the true-class logit: on a linear
model ``f(x) = x W + b`` that gradient is ``W[:, y]``, so the term's value, the
total loss and one SGD step have closed forms.
"""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rattr_jax import explainers, models, training
from rattr_jax.attribution import gradient
from rattr_jax.cli import main
from rattr_jax.data import load_dataset

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def readme():
  """The namespace of the README's "Extending rattr_jax" code blocks, executed in order."""
  text = README.read_text()
  section = text[text.index("## Extending rattr_jax"):]
  section = section[:section.index("\n## ", 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 3
  ns = {"__name__": "readme_extending"}
  for block in blocks:
    exec(compile(block, str(README), "exec"), ns)  # noqa: S102
  return ns


def test_readme_regularizer_example_trains(readme):
  assert readme["result"].status == "completed"
  assert "train_input_gradient_l2" in readme["result"].history[-1]
  assert training.TERMS["input_gradient_l2"] is readme["InputGradientL2"]


def _linear(seed=0):
  return models.create_model("mlp", input_shape=(4,), num_classes=3, hidden=(), seed=seed)


def test_toy_term_enters_the_loss_with_its_weight_closed_form(readme):
  InputGradientL2 = readme["InputGradientL2"]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (8, 4)).astype(np.float32))
  y = jnp.asarray(np.array([0, 1, 2, 0, 0, 1, 2, 2], np.int32))
  model = _linear()
  w = np.asarray(model.head.kernel[...], np.float64)
  b = np.asarray(model.head.bias[...], np.float64)
  lam, lr = 0.5, 0.1
  ts = training.make_train_step(model, optax.sgd(lr),
                                (training.CrossEntropy(), InputGradientL2(lam=lam)))
  state, met = ts.step(ts.init(0), x, y)

  xs, n = np.asarray(x, np.float64), len(y)
  logits = xs @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  onehot = np.eye(3)[np.asarray(y)]
  ce = -np.mean(np.log(p[np.arange(n), np.asarray(y)]))
  penalty = np.mean(np.sum(w[:, np.asarray(y)] ** 2, axis=0))
  np.testing.assert_allclose(met["input_gradient_l2"], penalty, rtol=1e-5)
  np.testing.assert_allclose(met["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(met["loss"], ce + lam * penalty, rtol=1e-5)
  # One SGD step: dCE/dW = X^T (p - onehot) / B; d penalty / dW[:, c] = 2 n_c / B * W[:, c].
  counts = onehot.sum(0)
  grad_w = xs.T @ (p - onehot) / n + lam * 2 * counts / n * w
  grad_b = np.mean(p - onehot, axis=0)
  np.testing.assert_allclose(state.params["head"]["kernel"][...], w - lr * grad_w, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(state.params["head"]["bias"][...], b - lr * grad_b, rtol=1e-5,
                             atol=1e-7)


def test_toy_term_trains_through_config_json_and_shrinks_input_gradients(readme):
  InputGradientL2 = readme["InputGradientL2"]
  data = load_dataset("digits", seed=0)

  def input_gradient_norm(model):
    fn = models.as_fn(model)
    x, y = jnp.asarray(data.x_test[:128]), jnp.asarray(data.y_test[:128])
    g = jax.grad(lambda z: jnp.sum(jnp.take_along_axis(fn(z), y[:, None], 1)))(x)
    return float(jnp.mean(jnp.sum(g.reshape(len(g), -1) ** 2, -1)))

  norms = {}
  for lam in (0.0, 1.0):
    cfg = training.preset("fast_cpu", model="mlp", dataset="digits", epochs=2, batch_size=32,
                          max_train=512, max_test=128)
    cfg = cfg.replace(terms=cfg.terms + (InputGradientL2(lam=lam),))
    # The config (with the user's term) survives JSON, as resume needs.
    assert training.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    res = training.train(cfg, dataset=data, progress=False)
    assert res.status == "completed"
    assert "train_input_gradient_l2" in res.history[-1]
    norms[lam] = input_gradient_norm(res.model)
  assert norms[1.0] < 0.5 * norms[0.0], norms


def test_cli_term_flag_builds_the_objective_generically(readme):
  from rattr_jax.cli import _train
  parser = __import__("argparse").ArgumentParser()
  _train.register(parser.add_subparsers())

  def config(*flags):
    args = parser.parse_args(["train", "--out", "unused", *flags])
    return _train.config_from_args(args)

  cfg = config("--term", "gradient_alignment:epsilon=4/255,lambda_cos=1")
  assert cfg.objective == "ce+gradient_alignment"
  ga = cfg.term("gradient_alignment")
  assert ga.epsilon == pytest.approx(4 / 255) and ga.lambda_cos == 1.0 and ga.lambda_l2 == 0.01
  # A term of the --method's objective is updated field by field; repeated --term adds terms.
  cfg = config("--method", "gradient_alignment", "--term", "gradient_alignment:lambda_cos=0.5",
               "--term", "input_gradient_l2:lam=0.25", "--term", "ce:weight=2")
  assert cfg.objective == "ce+gradient_alignment+input_gradient_l2"
  assert (cfg.term("gradient_alignment").epsilon, cfg.term("gradient_alignment").lambda_cos) == (
      0.1, 0.5)
  assert cfg.term("input_gradient_l2").lam == 0.25 and cfg.term("ce").weight == 2.0
  # Flat flags set the field on every term that has it; aliases map old flat names.
  cfg = config("--method", "activation_sensitivity", "--sensitivity-perturbation", "gaussian",
               "--layers", "fc1,fc2", "--term", "activation_sensitivity:num_steps=3,step_size=none")
  a = cfg.term("activation_sensitivity")
  assert (a.perturbation, a.layers, a.num_steps, a.step_size) == ("gaussian", ("fc1", "fc2"), 3,
                                                                  None)
  # Flat flags reach the terms --term adds; a field given in --term wins over its flat flag.
  assert config("--term", "pgd", "--epsilon", "8/255").term("pgd").epsilon == pytest.approx(8 / 255)
  assert config("--term", "pgd:epsilon=0.05", "--epsilon", "0.2").term("pgd").epsilon == 0.05
  assert config("--term", "activation_sensitivity:layers=fc1+fc2").term(
      "activation_sensitivity").layers == ("fc1", "fc2")


@pytest.mark.parametrize("spec, message", [
    ("bogus:lam=1", "unknown term 'bogus'; valid terms: activation_sensitivity, ce,"),
    ("pgd:lam=1", "term 'pgd' has no field 'lam'; valid fields: epsilon, num_steps, step_size"),
    ("pgd:epsilon=abc", "`pgd.epsilon` expects a number or a fraction like 8/255"),
    ("pgd:epsilon=2", "`pgd.epsilon` is a radius in input units"),
    ("pgd:num_steps=0", "`pgd.num_steps` must be a positive int"),
    ("gradient_alignment:perturbation=pgd", "unknown `gradient_alignment.perturbation` 'pgd'"),
    ("pgd:epsilon", "expected field=value"),
])
def test_cli_term_errors_are_one_line_and_list_valid_values(tmp_path, capsys, spec, message):
  assert main(["train", "--term", spec, "--out", str(tmp_path / "r")]) == 2
  err = capsys.readouterr().err.strip()
  assert "Traceback" not in err and len(err.splitlines()) == 1, err
  assert message.lower() in err.lower(), err


def test_flat_parameter_that_no_term_takes_is_an_error(tmp_path, capsys):
  assert main(["train", "--lam", "1", "--out", str(tmp_path / "r")]) == 2
  assert "`lam` is not a hyper-parameter of the objective (ce)" in capsys.readouterr().err


def test_register_term_rejects_a_clash_and_non_terms():
  class Other(training.Term):
    name = "pgd"

  with pytest.raises(ValueError, match="already registered"):
    training.register_term(Other)
  with pytest.raises(TypeError, match="Term subclass"):
    training.register_term(dict)
  with pytest.raises(TypeError):
    training.PGD(0.1)  # hyper-parameters are keyword-only


def test_readme_attack_example_stays_in_the_ball_keeps_labels_and_moves_the_map(readme):
  from rattr_jax.testing import TanhMLP
  fn = TanhMLP(jax.random.key(0), d=6, h=8, c=3)
  x = jax.random.uniform(jax.random.key(1), (4, 6), minval=0.2, maxval=0.8)
  y = jnp.argmax(fn(x), -1)
  eps = 0.05
  z = readme["map_distance_attack"](fn, gradient, x, y, key=jax.random.key(2), epsilon=eps)
  assert float(jnp.max(jnp.abs(z - x))) <= eps + 1e-6
  assert bool(jnp.all(jnp.argmax(fn(z), -1) == y))
  moved = jnp.sum((gradient(fn, z, y) - gradient(fn, x, y)) ** 2, -1)
  rand = x + eps * jnp.sign(jax.random.normal(jax.random.key(3), x.shape))
  moved_rand = jnp.sum((gradient(fn, rand, y) - gradient(fn, x, y)) ** 2, -1)
  assert bool(jnp.any(z != x))
  assert float(jnp.sum(moved)) > float(jnp.sum(moved_rand)), (moved, moved_rand)


def test_readme_metric_example_closed_forms(readme):
  gini = readme["gini_sparsity"]
  n = 5
  maps = jnp.stack([jnp.eye(n)[2], jnp.ones(n), jnp.arange(n, dtype=jnp.float32)])
  fn = lambda x: jnp.stack([x.sum(-1), -x.sum(-1)], -1)  # noqa: E731
  x = jnp.zeros((3, n))
  g = gini(fn, explainers.precomputed(maps), x, 0, key=jax.random.key(0))
  # One feature holds all the mass: (n - 1) / n; uniform: 0; 0..n-1: sum_k (2k - n - 1) a_k / (n sum a).
  a = np.arange(n, dtype=np.float64)
  expected = [(n - 1) / n, 0.0, np.sum((2 * np.arange(1, n + 1) - n - 1) * a) / (n * a.sum())]
  np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["cnn", "resnet18"])
def test_clean_pass_features_equal_a_separate_feature_pass(kind):
  """Activation sensitivity reads its clean features from the engine's clean pass
  (`models.call_with_features`): loss, parameters and BatchNorm statistics after a step
  equal those of the same term computing the clean features in a pass of its own."""
  import dataclasses
  if kind == "cnn":
    m = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, widths=(4, 4, 8))
    x = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
    layers = ("conv2", "fc1")
  else:  # BatchNorm: the clean pass also updates the running statistics
    m = models.create_model("resnet18", input_shape=(8, 8, 3), num_classes=10,
                            widths=(4, 4, 4, 4))
    x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3))
    layers = ("blocks.0",)
  y = jnp.arange(6, dtype=jnp.int32) % 10
  term = training.make_term("activation_sensitivity", layers=layers, epsilon=0.1, lam=2.0)
  shared = term.loss_term()
  assert shared.clean_layers == layers
  separate = dataclasses.replace(shared, clean_layers=())
  ce = training.make_term("ce")
  out = []
  for t in (shared, separate):
    ts = training.make_train_step(m, optax.sgd(0.1), [ce, t], seed=3)
    state, met = ts.step(ts.init(3), x, y)
    out.append((met, state))
  (m1, s1), (m2, s2) = out
  np.testing.assert_allclose(m1["activation_sensitivity"], m2["activation_sensitivity"],
                             rtol=1e-5, atol=1e-7)
  assert float(m1["activation_sensitivity"]) > 0
  for a, b in zip(jax.tree_util.tree_leaves((s1.params, s1.rest)),
                  jax.tree_util.tree_leaves((s2.params, s2.rest))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
  # The Jacobian form differentiates the features at x itself: no clean-pass features.
  jac = training.make_term("activation_sensitivity", layers=layers, form="jacobian")
  assert jac.loss_term().clean_layers == ()


def test_call_with_features_is_the_model_call_plus_feature_fn():
  m = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, widths=(4, 4, 8))
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  logits, (c2, f1) = models.call_with_features(m, x, ("conv2", "fc1"))
  np.testing.assert_allclose(logits, m(x), rtol=1e-6)
  ref = models.feature_fn(m, ("conv2", "fc1"))(x)
  np.testing.assert_allclose(c2, ref[0], rtol=1e-6)
  np.testing.assert_allclose(f1, ref[1], rtol=1e-6)
  with pytest.raises(ValueError, match="available layer names"):
    models.call_with_features(m, x, "nope")


def _box_ctx():
  """A stand-in term context for the logits ``[sum(x), 0]`` (no model needed)."""
  import types
  fn = lambda z: jnp.stack([jnp.sum(z.reshape(len(z), -1), 1), jnp.zeros(len(z))], 1)
  return types.SimpleNamespace(fn=fn, eval_fn=fn)


@pytest.mark.parametrize("name", ["pgd", "fgsm"])
def test_adversarial_terms_clip_to_their_input_range(name):
  """Inputs at the bottom of a (-1, 1) box. The attack raises ``sum(x)`` (class 1's CE is
  ``log(1 + exp(sum x))``); inside the box it ends at ``x + epsilon`` (PGD exactly; FGSM at
  most), while the default (0, 1) box would clip every feature up to 0 (CE >= log 2)."""
  import types
  x = -jnp.ones((3, 8), jnp.float32)
  batch = types.SimpleNamespace(x=x, y=jnp.ones(3, jnp.int32))
  eps = 0.1
  corner = float(np.log1p(np.exp(8 * (-1 + eps))))
  own = training.make_term(name, epsilon=eps, input_range=(-1.0, 1.0))
  loss, _ = own.loss(_box_ctx(), batch, jax.random.key(0))
  if name == "pgd":
    np.testing.assert_allclose(float(loss), corner, rtol=1e-3)  # float32 steps
  else:
    assert float(np.log1p(np.exp(-8.0))) < float(loss) <= corner * (1 + 1e-3)
  default, _ = training.make_term(name, epsilon=eps).loss(_box_ctx(), batch, jax.random.key(0))
  assert float(default) >= np.log(2) - 1e-6
  if name == "pgd":  # PGD ends at the corner x + epsilon, inside the box: no box, same loss
    none, _ = training.make_term(name, epsilon=eps, input_range=None).loss(
        _box_ctx(), batch, jax.random.key(0))
    np.testing.assert_allclose(float(none), float(loss), rtol=1e-3)


def test_input_range_field_parses_checks_and_survives_json():
  name, params = training.parse_term("pgd:input_range=-1:1,epsilon=1.5")
  assert (name, params) == ("pgd", {"input_range": (-1.0, 1.0), "epsilon": 1.5})
  term = training.make_term(name, **params)  # a radius up to the box's width (2) is valid
  assert training.term_from_dict(json.loads(json.dumps(term.to_dict()))) == term
  assert training.parse_term("trades:input_range=none")[1] == {"input_range": None}
  assert training.parse_term("activation_sensitivity:input_range=0:255")[1] == {
      "input_range": (0.0, 255.0)}
  for spec, message in [("pgd:input_range=1", "expects a box lo:hi"),
                        ("fgsm:input_range=0:x", "expects a number"),
                        ("pgd:input_range=-1:1,epsilon=3", "must be <= 2")]:
    with pytest.raises(ValueError, match=message):
      training.make_term(*training.parse_term(spec)[:1], **training.parse_term(spec)[1])
  with pytest.raises(ValueError, match=r"`pgd.input_range` must be a box \(lo, hi\)"):
    training.make_term("pgd", input_range=(1.0, 0.0))
