"""Tests of rattr_jax.regularizers and the layer-feature mechanism (rattr_jax.models._features)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rattr_jax import core, explainers, models
from rattr_jax.attribution import gradient
from rattr_jax import regularizers as R
from rattr_jax.models import feature_fn, layer_names
from rattr_jax.testing import linear_model

# --------------------------------------------------------------------------- helpers


def _init_mlp(key, d=4, h=5, c=3, dtype=jnp.float32):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {"W1": jax.random.normal(k1, (d, h), dtype) / np.sqrt(d),
          "b1": 0.1 * jax.random.normal(k2, (h,), dtype),
          "W2": jax.random.normal(k3, (h, c), dtype) / np.sqrt(h),
          "b2": 0.1 * jax.random.normal(k4, (c,), dtype)}


def _act(z):
  return jax.nn.softplus(3.0 * z) / 3.0


def _mlp(p, x):
  return _act(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def _flat(p):
  return jnp.concatenate([p[k].ravel() for k in sorted(p)])


def _unflat(v, like):
  out, i = {}, 0
  for k in sorted(like):
    n = like[k].size
    out[k] = v[i:i + n].reshape(like[k].shape)
    i += n
  return out


def _check_param_grad_fd(loss_of_params, p, num_dirs=3, eps=1e-6, rtol=1e-5, atol=1e-8):
  """Directional derivatives of jax.grad vs central finite differences (float64)."""
  g = _flat(jax.grad(loss_of_params)(p))
  assert np.all(np.isfinite(np.asarray(g)))
  assert float(jnp.linalg.norm(g)) > 0
  v0 = _flat(p)
  rng = np.random.default_rng(0)
  f = jax.jit(lambda v: loss_of_params(_unflat(v, p)))
  for _ in range(num_dirs):
    d = jnp.asarray(rng.standard_normal(v0.shape))
    fd = (f(v0 + eps * d) - f(v0 - eps * d)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.dot(g, d)), float(fd), rtol=rtol, atol=atol)


X_KEY = jax.random.key(1)


def _data(dtype=jnp.float32, b=6, d=4, c=3):
  x = jax.random.uniform(X_KEY, (b, d), dtype)
  y = jnp.arange(b) % c
  return x, y


# --------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def cnn():
  return models.create_model("cnn", input_shape=(8, 8, 1), num_classes=10,
                             activation="softplus:3")


def test_layer_names_and_feature_values(cnn):
  assert layer_names(cnn) == ("conv1", "conv2", "fc1", "fc2")
  x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
  assert set(layer_names(cnn, x)) == {"conv1", "conv2", "fc1", "fc2"}
  a = cnn.activation
  h1 = cnn.conv1(x)
  h = models.max_pool2(a(cnn.conv2(models.max_pool2(a(h1)))))
  fc1 = cnn.fc1(h.reshape(3, -1))
  (f1, f2), logits = feature_fn(cnn, ["conv1", "fc1"], with_logits=True)(x)
  np.testing.assert_allclose(f1, h1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(f2, fc1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, models.as_fn(cnn)(x), rtol=1e-5, atol=1e-5)
  assert feature_fn(cnn, "fc1")(x).shape == (3, 64)


def test_feature_fn_unknown_layer_lists_names(cnn):
  x = jnp.zeros((2, 8, 8, 1))
  with pytest.raises(ValueError, match=r"Unknown `layer` 'nope'.*conv1.*fc2"):
    feature_fn(cnn, "nope")(x)
  with pytest.raises(ValueError, match="at least one"):
    feature_fn(cnn, [])


def test_feature_fn_sown_values_and_nested_modules():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.body = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])

    def __call__(self, x):
      h = jnp.tanh(self.body[0](x))
      self.sow(nnx.Intermediate, "hidden_act", h)
      return self.body[1](h)

  net = Net(nnx.Rngs(0))
  x = jnp.ones((2, 3))
  assert set(layer_names(net, x)) == {"body.0", "body.1", "hidden_act"}
  np.testing.assert_allclose(feature_fn(net, "hidden_act")(x), jnp.tanh(net.body[0](x)),
                             rtol=1e-6)


def test_feature_fn_parameter_gradients(cnn):
  graphdef, state = nnx.split(cnn)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))

  def loss(st):
    return jnp.sum(feature_fn(nnx.merge(graphdef, st), "fc1")(x) ** 2)

  g = jax.jit(jax.grad(loss))(state)
  assert float(jnp.abs(g["conv1"]["kernel"][...]).sum()) > 0
  assert float(jnp.abs(g["fc2"]["kernel"][...]).sum()) == 0  # fc2 is after fc1


# --------------------------------------------------------------------------- gradient alignment


def _ga_reference(p, x, y, key, eps, lam_l2, lam_cos):
  """Per-example input gradients of single-example functions (vmap), explicit formulas."""
  delta = eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)

  def one(xb, db, yb):
    gf = jax.grad(lambda z: _mlp(p, z[None])[0, yb])
    a, c = gf(xb), gf(xb + db)
    cos = jnp.dot(a, c) / (jnp.linalg.norm(a) * jnp.linalg.norm(c))
    return lam_l2 * jnp.sum((a - c) ** 2) + lam_cos * (1 - cos) / 2

  return jax.vmap(one)(x, delta, y)


def test_gradient_alignment_matches_reference(x64):
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  key = jax.random.key(3)
  got = R.gradient_alignment(lambda z: _mlp(p, z), gradient, x, y, key=key, epsilon=0.3,
                             lambda_l2=0.7,
                             lambda_cos=1.3, reduction="none")
  np.testing.assert_allclose(got, _ga_reference(p, x, y, key, 0.3, 0.7, 1.3), rtol=1e-10)


def test_alignment_distances_are_the_parts_of_gradient_alignment(x64):
  """lambda_l2 * l2 + lambda_cos * cosd == gradient_alignment; explainer=None is the gradient;
  the same values inside jit + grad (how training terms call it)."""
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  key = jax.random.key(3)
  fn = lambda z: _mlp(p, z)  # noqa: E731
  for pert in ("uniform", "grad_sign"):
    d = R.alignment_distances(fn, gradient, x, y, key=key, epsilon=0.3, perturbation=pert)
    assert d.l2.shape == d.cosd.shape == (x.shape[0],)
    assert float(jnp.min(d.cosd)) >= 0.0 and float(jnp.max(d.cosd)) <= 1.0
    ga = R.gradient_alignment(fn, gradient, x, y, key=key, epsilon=0.3, lambda_l2=0.7,
                              lambda_cos=1.3, perturbation=pert, reduction="none")
    np.testing.assert_allclose(0.7 * d.l2 + 1.3 * d.cosd, ga, rtol=1e-12)
    d0 = R.alignment_distances(fn, None, x, y, key=key, epsilon=0.3, perturbation=pert)
    np.testing.assert_allclose(d0.l2, d.l2, rtol=1e-12)
    np.testing.assert_allclose(d0.cosd, d.cosd, rtol=1e-12)

  def loss(q, xx, yy, k):
    dd = R.alignment_distances(lambda z: _mlp(q, z), None, xx, yy, key=k, epsilon=0.3)
    return jnp.mean(0.7 * dd.l2 + 1.3 * dd.cosd)

  def ref(q, xx, yy, k):
    return R.gradient_alignment(lambda z: _mlp(q, z), gradient, xx, yy, key=k, epsilon=0.3,
                                lambda_l2=0.7, lambda_cos=1.3)

  g_jit = jax.jit(jax.grad(loss))(p, x, y, key)
  g_ref = jax.grad(ref)(p, x, y, key)
  for k in p:
    np.testing.assert_allclose(g_jit[k], g_ref[k], rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="perturbation"):
    R.alignment_distances(fn, None, x, y, key=key, epsilon=0.3, perturbation="bogus")
  with pytest.raises(ValueError, match="explainer"):
    R.alignment_distances(fn, 3, x, y, key=key, epsilon=0.3)


def test_gradient_alignment_zero_at_zero_epsilon():
  p = _init_mlp(jax.random.key(0))
  x, y = _data()

  def loss(q):
    return R.gradient_alignment(lambda z: _mlp(q, z), gradient, x, y, key=jax.random.key(0),
                                epsilon=0.0)

  assert abs(float(loss(p))) < 1e-6
  g = jax.grad(loss)(p)
  assert max(float(jnp.abs(v).max()) for v in g.values()) < 1e-5


@pytest.mark.parametrize("perturbation", ["uniform", "gaussian", "grad_sign"])
def test_gradient_alignment_param_grads_fd(x64, perturbation):
  """Full derivative (no stop-gradient on g(x)) against finite differences."""
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  _check_param_grad_fd(lambda q: R.gradient_alignment(
      lambda z: _mlp(q, z), gradient, x, y, key=jax.random.key(5), epsilon=0.2,
      perturbation=perturbation, stop_gradient_source=False), p)


def test_gradient_alignment_stop_gradient_param_grads_fd(x64):
  """With stop_gradient_source, the gradient is that of R(g_p0(x), g_q(x + delta)) at q = p0."""
  p0 = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  key = jax.random.key(5)
  delta = 0.2 * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)

  def tgrad(q, z):
    return jax.grad(lambda w: jnp.sum(jnp.take_along_axis(_mlp(q, w), y[:, None], 1)))(z)

  src = tgrad(p0, x)

  def partial_loss(q):
    g = tgrad(q, x + delta)
    cos = jnp.sum(src * g, 1) / (jnp.linalg.norm(src, axis=1) * jnp.linalg.norm(g, axis=1))
    return jnp.mean(0.01 * jnp.sum((src - g) ** 2, 1) + (1 - cos) / 2)

  g_lib = jax.grad(lambda q: R.gradient_alignment(lambda z: _mlp(q, z), gradient, x, y,
                                                  key=key,
                                                  epsilon=0.2))(p0)
  np.testing.assert_allclose(_flat(g_lib), _flat(jax.grad(partial_loss)(p0)), rtol=1e-9)
  _check_param_grad_fd(partial_loss, p0)


def test_gradient_alignment_stop_gradient_source(x64):
  """With stop_gradient_source the parameter gradient ignores g(x)'s dependence on params."""
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  f = lambda q, sg: R.gradient_alignment(lambda z: _mlp(q, z), gradient, x, y,  # noqa: E731
                                         key=jax.random.key(5),
                                         epsilon=0.2, stop_gradient_source=sg)
  np.testing.assert_allclose(f(p, True), f(p, False), rtol=1e-12)
  g1, g2 = _flat(jax.grad(f)(p, True)), _flat(jax.grad(f)(p, False))
  assert float(jnp.linalg.norm(g1 - g2)) > 1e-6


@pytest.mark.parametrize("name", ["integrated_gradients", "smoothgrad"])
def test_alignment_of_other_explainers_param_grads_fd(x64, name):
  """Any differentiable explainer can be aligned: IG / SmoothGrad regularizers have parameter
  gradients (a double backward through the explainer) that match finite differences."""
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  ex = explainers.get(name, **({"num_steps": 4, "chunk_size": 2} if name != "smoothgrad"
                              else {"num_samples": 3, "stddev": 0.1}))
  loss = lambda q: R.gradient_alignment(lambda z: _mlp(q, z), ex, x, y,  # noqa: E731
                                        key=jax.random.key(5), epsilon=0.2,
                                        stop_gradient_source=False)
  assert float(loss(p)) > 0
  _check_param_grad_fd(loss, p)
  # The value is the alignment of that explainer's maps (common random numbers at x, x + d).
  k_ex = core.call_key(jax.random.key(5), 0)
  d = 0.2 * jax.random.uniform(jax.random.key(5), x.shape, x.dtype, -1.0, 1.0)
  a = ex(lambda z: _mlp(p, z), x, y, key=k_ex)
  b = ex(lambda z: _mlp(p, z), x + d, y, key=k_ex)
  cos = jnp.sum(a * b, 1) / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1))
  want = jnp.mean(0.01 * jnp.sum((a - b) ** 2, 1) + (1 - cos) / 2)
  np.testing.assert_allclose(loss(p), want, rtol=1e-10)


def test_gradient_alignment_bad_args():
  p = _init_mlp(jax.random.key(0))
  x, y = _data()
  fn = lambda z: _mlp(p, z)  # noqa: E731
  with pytest.raises(ValueError, match="lambda_l2"):
    R.gradient_alignment(fn, gradient, x, y, key=jax.random.key(0), lambda_l2=-1.0)
  with pytest.raises(ValueError, match="perturbation"):
    R.gradient_alignment(fn, gradient, x, y, key=jax.random.key(0), perturbation="nope")
  with pytest.raises(ValueError, match="key"):
    R.gradient_alignment(fn, gradient, x, y, key=None)
  with pytest.raises(ValueError, match="epsilon"):
    R.gradient_alignment(fn, gradient, x, y, key=jax.random.key(0), epsilon=-0.1)
  with pytest.raises(ValueError, match="explainer"):
    R.gradient_alignment(fn, lambda f, z, t, *, key: z[:, :2], x, y, key=jax.random.key(0))


# --------------------------------------------------------------------------- Hessian norm


def test_hessian_norm_zero_for_linear_model():
  lin = linear_model(jax.random.key(0), 12, 4)
  x = jax.random.normal(jax.random.key(1), (5, 12))
  for mode in ("forward_over_reverse", "reverse_over_reverse"):
    assert float(R.hessian_norm(lin, x, 2, key=jax.random.key(0), mode=mode)) == 0.0


def test_hessian_norm_matches_dense_reference(x64):
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  key = jax.random.key(4)
  v = jax.random.normal(key, x.shape, x.dtype)  # the probe drawn for num_samples=1
  hess = jax.vmap(lambda xb, yb: jax.hessian(lambda z: _mlp(p, z[None])[0, yb])(xb))(x, y)
  ref = jnp.sum(jnp.einsum("bij,bj->bi", hess, v) ** 2, -1)  # dense [B, F, F] Hessians
  for mode in ("forward_over_reverse", "reverse_over_reverse", "auto"):
    got = R.hessian_norm(lambda z: _mlp(p, z), x, y, key=key, mode=mode, reduction="none")
    np.testing.assert_allclose(got, ref, rtol=1e-10)
  # Hutchinson: many probes approach ||H||_F^2.
  fro = jnp.sum(hess ** 2, axis=(1, 2))
  est = R.hessian_norm(lambda z: _mlp(p, z), x, y, key=key, num_samples=4000, reduction="none")
  np.testing.assert_allclose(est, fro, rtol=0.1)


def test_hessian_norm_param_grads_fd(x64):
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  _check_param_grad_fd(lambda q: R.hessian_norm(lambda z: _mlp(q, z), x, y,
                                                key=jax.random.key(5)), p)


def test_hessian_norm_auto_mode_with_fast_conv(cnn, square_without_jvp):
  """The fast conv is a primitive with a JVP: "auto" picks forward-over-reverse for both
  convolutions; a `jax.custom_vjp` inside the model makes it fall back."""
  x = jnp.zeros((2, 8, 8, 1))
  t = jnp.zeros((2,), jnp.int32)
  assert R.hessian_mode(models.as_fn(cnn, conv_impl="fast"), x, t) == "forward_over_reverse"
  assert R.hessian_mode(models.as_fn(cnn, conv_impl="lax"), x, t) == "forward_over_reverse"
  fn = lambda z: models.as_fn(cnn, conv_impl="fast")(square_without_jvp(z))  # noqa: E731
  assert R.hessian_mode(fn, x, t) == "reverse_over_reverse"


@pytest.mark.parametrize("activation", ["relu", "softplus:3"])
def test_hessian_norm_term_on_a_fast_conv_cnn_trains(activation):
  """Regression: with jax 0.10 `jax.jvp` of `jax.grad` lowers through a `custom_vjp`
  and fails only when differentiated again (no rule for 'custom_lin'), so the "auto"
  probe includes that outer gradient. When the fast convolution was a `custom_vjp`,
  a 28x28 ReLU MNIST CNN's hessian_norm term resolved to forward-over-reverse and its
  training step raised. The convolution is now a primitive with a JVP: the term
  resolves to forward-over-reverse and trains. The ReLU net's input Hessian is 0
  almost everywhere."""
  import optax
  from rattr_jax import training
  cnn = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, seed=0,
                            activation=activation)
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  y = jnp.array([0, 1, 2, 3])
  terms = training.resolve_terms(training.method_terms("hessian_norm"), cnn, x, y)
  assert [t.fn.__self__.mode for t in terms if t.name == "hessian_norm"] == ["forward_over_reverse"]
  ts = training.make_train_step(cnn, optax.adam(1e-3), terms)
  state, metrics = ts.step(ts.init(0), x, y)
  value = float(metrics["hessian_norm"])
  assert np.isfinite(value) and (value > 0 if activation != "relu" else value >= 0)


def test_hessian_norm_parameter_gradient_through_the_fast_conv_all_modes(x64):
  """Third order through the fast convolution (a primitive whose transposes are again
  primitives): the Hessian-norm penalty and its gradient with respect to the weights,
  forward-over-reverse and reverse-over-reverse, equal plain `lax` convolutions'
  (float64), and a finite difference along a random weight direction."""
  cnn = models.create_model("cnn", input_shape=(12, 12, 1), num_classes=3, seed=0,
                            widths=(4, 6, 8), activation="softplus:3")
  x = jax.random.uniform(jax.random.key(0), (3, 12, 12, 1), jnp.float64)
  y = jnp.array([0, 1, 2])
  vals, grads = {}, {}
  for impl in ("fast", "lax"):
    apply, params = models.functional(cnn, conv_impl=impl)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    for mode in ("forward_over_reverse", "reverse_over_reverse"):
      pen = lambda p, mode=mode, apply=apply: R.hessian_norm(  # noqa: E731
          lambda z: apply(p, z), x, y, key=jax.random.key(1), mode=mode)
      vals[impl, mode], grads[impl, mode] = jax.value_and_grad(pen)(params)
  ref = ("lax", "reverse_over_reverse")
  assert float(vals[ref]) > 1e-6
  for k in vals:
    np.testing.assert_allclose(vals[k], vals[ref], rtol=1e-10, err_msg=str(k))
    for a, b in zip(jax.tree.leaves(grads[k]), jax.tree.leaves(grads[ref])):
      np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12, err_msg=str(k))
  apply, params = models.functional(cnn)
  params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
  pen = lambda p: R.hessian_norm(lambda z: apply(p, z), x, y, key=jax.random.key(1),  # noqa: E731
                                 mode="forward_over_reverse")
  leaves, tree = jax.tree.flatten(params)
  v = jax.tree.unflatten(tree, [jax.random.normal(jax.random.key(i), a.shape, a.dtype)
                                for i, a in enumerate(leaves)])
  h = 1e-5
  shift = lambda s: jax.tree.map(lambda p, d: p + s * h * d, params, v)  # noqa: E731
  fd = (pen(shift(1)) - pen(shift(-1))) / (2 * h)
  got = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grads["fast", "forward_over_reverse"]),
                                           jax.tree.leaves(v)))
  np.testing.assert_allclose(got, fd, rtol=1e-6)


# --------------------------------------------------------------------------- input-gradient norm


def test_input_gradient_norm_linear_closed_form():
  lin = linear_model(jax.random.key(0), 7, 4)
  x = jax.random.normal(jax.random.key(1), (5, 7))
  y = jnp.array([0, 1, 2, 3, 0])
  p = jax.nn.softmax(lin(x), -1)
  g = (p - jax.nn.one_hot(y, 4)) @ lin.W
  np.testing.assert_allclose(R.input_gradient_norm(lin, x, y, reduction="none"),
                             jnp.sum(g ** 2, -1), rtol=1e-5)
  np.testing.assert_allclose(R.input_gradient_norm(lin, x, y, of="logit", reduction="none"),
                             jnp.sum(lin.W[y] ** 2, -1), rtol=1e-5)


def test_input_gradient_norm_param_grads_fd(x64):
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  _check_param_grad_fd(lambda q: R.input_gradient_norm(lambda z: _mlp(q, z), x, y), p)


# --------------------------------------------------------------------------- activation sensitivity


def _nnx_mlp64():
  m = models.MLP(4, 3, hidden=(6, 5), activation="softplus:3", rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(m)
  state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), state)
  return graphdef, state


def _hidden_ref(graphdef, state, x):
  """Hand-written pre-activations of both hidden layers, one example ``x [F]``."""
  m = nnx.merge(graphdef, state)
  a0 = x @ m.hidden[0].kernel[...] + m.hidden[0].bias[...]
  a1 = _act(a0) @ m.hidden[1].kernel[...] + m.hidden[1].bias[...]
  return a0, a1


def test_activation_sensitivity_zero_perturbation():
  m = models.MLP(4, 3, hidden=(6, 5), rngs=nnx.Rngs(0))
  x, y = _data()
  for pert in ("uniform", "gaussian", "fgsm", "pgd"):
    v = R.activation_sensitivity(m, x, y, layers=["hidden.0", "hidden.1"], key=jax.random.key(0),
                                 epsilon=0.0, perturbation=pert)
    assert float(v) == 0.0


def test_activation_sensitivity_perturbation_matches_reference(x64):
  graphdef, state = _nnx_mlp64()
  m = nnx.merge(graphdef, state)
  x, y = _data(jnp.float64)
  key = jax.random.key(2)
  w = (jnp.linspace(0.5, 2.0, 6), jnp.linspace(2.0, 0.1, 5))
  got = R.activation_sensitivity(m, x, y, layers=["hidden.0", "hidden.1"], key=key,
                                 epsilon=0.3, neuron_weights=w, layer_weights=(1.0, 0.5),
                                 reduction="none")
  delta = 0.3 * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  ref = []
  for b in range(x.shape[0]):
    c0, c1 = _hidden_ref(graphdef, state, x[b])
    p0, p1 = _hidden_ref(graphdef, state, x[b] + delta[b])
    ref.append(jnp.mean(w[0] * jnp.abs(p0 - c0)) + 0.5 * jnp.mean(w[1] * jnp.abs(p1 - c1)))
  np.testing.assert_allclose(got, jnp.stack(ref), rtol=1e-10)


def test_activation_sensitivity_jacobian_matches_reference(x64):
  graphdef, state = _nnx_mlp64()
  m = nnx.merge(graphdef, state)
  x, y = _data(jnp.float64)
  key = jax.random.key(2)
  got = R.activation_sensitivity(m, x, y, layers="hidden.1", key=key, form="jacobian",
                                 num_projections=3, reduction="none")
  v = jax.random.normal(jax.random.split(key, 1)[0], (3, x.shape[0], 5), x.dtype)
  ref = []
  for b in range(x.shape[0]):
    jac = jax.jacobian(lambda z: _hidden_ref(graphdef, state, z)[1])(x[b])  # [5, 4]
    ref.append(jnp.mean(jnp.sum((v[:, b] @ jac) ** 2, -1)) / 5)
  np.testing.assert_allclose(got, jnp.stack(ref), rtol=1e-10)
  # Many projections approach ||J||_F^2 / n.
  est = R.activation_sensitivity(m, x, y, layers="hidden.1", key=key, form="jacobian",
                                 num_projections=4000, reduction="none")
  fro = jnp.stack([jnp.sum(jax.jacobian(lambda z: _hidden_ref(graphdef, state, z)[1])(x[b]) ** 2)
                   for b in range(x.shape[0])]) / 5
  np.testing.assert_allclose(est, fro, rtol=0.1)


@pytest.mark.parametrize("form,pert", [("perturbation", "uniform"), ("perturbation", "pgd"),
                                       ("jacobian", "uniform")])
def test_activation_sensitivity_param_grads_fd(x64, form, pert):
  graphdef, state = _nnx_mlp64()
  params = {"s": state}
  x, y = _data(jnp.float64)

  def loss(p):
    return R.activation_sensitivity(nnx.merge(graphdef, p["s"]), x, y, layers=["hidden.1"],
                                    key=jax.random.key(5), epsilon=0.05, form=form,
                                    perturbation=pert, num_steps=2, input_range=None)

  g = jax.grad(loss)(params)
  leaves = jax.tree_util.tree_leaves(g)
  assert all(np.all(np.isfinite(np.asarray(a))) for a in leaves)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  gflat = jax.flatten_util.ravel_pytree(g)[0]
  f = jax.jit(lambda v: loss(unravel(v)))
  rng = np.random.default_rng(0)
  for _ in range(2):
    d = jnp.asarray(rng.standard_normal(flat.shape))
    fd = (f(flat + 1e-6 * d) - f(flat - 1e-6 * d)) / 2e-6
    np.testing.assert_allclose(float(gflat @ d), float(fd), rtol=1e-5, atol=1e-9)


def test_activation_sensitivity_bad_layer_and_args():
  m = models.MLP(4, 3, hidden=(6, 5), rngs=nnx.Rngs(0))
  x, y = _data()
  with pytest.raises(ValueError, match=r"Unknown `layer` 'fc9'.*hidden\.0"):
    R.activation_sensitivity(m, x, y, layers="fc9", key=jax.random.key(0))
  with pytest.raises(ValueError, match="form"):
    R.activation_sensitivity(m, x, y, layers="hidden.0", key=jax.random.key(0), form="x")
  with pytest.raises(ValueError, match="neuron_weights"):
    R.activation_sensitivity(m, x, y, layers="hidden.0", key=jax.random.key(0),
                             neuron_weights=(jnp.ones(3),))
  with pytest.raises(ValueError, match="target"):
    R.activation_sensitivity(m, x, None, layers="hidden.0", key=jax.random.key(0),
                             perturbation="pgd")


@pytest.mark.parametrize("form,pert", [("perturbation", "uniform"), ("perturbation", "fgsm"),
                                       ("perturbation", "pgd"), ("jacobian", "uniform")])
def test_feature_sensitivity_is_activation_sensitivity_of_the_features(x64, form, pert):
  graphdef, state = _nnx_mlp64()
  m = nnx.merge(graphdef, state)
  x, y = _data(jnp.float64)
  layers = ["hidden.0", "hidden.1"]
  kw = dict(key=jax.random.key(4), form=form, perturbation=pert, epsilon=0.2, num_steps=3,
            layer_weights=(1.0, 0.5), neuron_weights=(jnp.linspace(0.5, 2.0, 6), jnp.linspace(2.0, 0.1, 5)))
  want = R.activation_sensitivity(m, x, y, layers=layers, reduction="none", **kw)
  feats, fn = feature_fn(m, layers), models.as_fn(m)
  got = R.feature_sensitivity(feats, fn, x, y, **kw)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  jitted = jax.jit(lambda z, t: R.feature_sensitivity(feats, fn, z, t, **kw))(x, y)
  np.testing.assert_allclose(jitted, want, rtol=1e-12)
  # The caller's clean features replace the clean pass (same values).
  with_clean = R.feature_sensitivity(feats, fn, x, y, clean=feats(x), **kw)
  np.testing.assert_allclose(with_clean, want, rtol=1e-12)


def test_feature_sensitivity_one_layer_and_bad_args():
  m = models.MLP(4, 3, hidden=(6, 5), rngs=nnx.Rngs(0))
  x, y = _data()
  fn, key = models.as_fn(m), jax.random.key(0)
  one = R.feature_sensitivity(feature_fn(m, "hidden.1"), fn, x, y, key=key)
  want = R.activation_sensitivity(m, x, y, layers="hidden.1", key=key, reduction="none")
  np.testing.assert_allclose(one, want, rtol=1e-6)
  with pytest.raises(ValueError, match="`form`"):
    R.feature_sensitivity(feature_fn(m, "hidden.1"), fn, x, y, key=key, form="x")
  with pytest.raises(ValueError, match="`layer_weights`"):
    R.feature_sensitivity(feature_fn(m, "hidden.1"), fn, x, y, key=key, layer_weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="`neuron_weights`"):
    R.feature_sensitivity(feature_fn(m, "hidden.1"), fn, x, y, key=key,
                          neuron_weights=(None, None))
  with pytest.raises(ValueError, match="`num_samples`"):
    R.feature_sensitivity(feature_fn(m, "hidden.1"), fn, x, y, key=key, num_samples=0)
  with pytest.raises(ValueError, match="`target` is required"):
    R.feature_sensitivity(feature_fn(m, "hidden.1"), fn, x, None, key=key, perturbation="pgd")


def test_feature_neuron_sensitivity_is_neuron_sensitivity(cnn):
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
  kw = dict(key=jax.random.key(1), epsilon=0.1, perturbation="fgsm")
  want = R.neuron_sensitivity(cnn, x, jnp.arange(4), layers=["conv2", "fc1"], **kw)
  got = R.feature_neuron_sensitivity(feature_fn(cnn, ["conv2", "fc1"]), models.as_fn(cnn), x,
                                     jnp.arange(4), **kw)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_neuron_sensitivity_shapes_and_mean(cnn):
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
  s = R.neuron_sensitivity(cnn, x, jnp.arange(4), layers=["conv2", "fc1"],
                           key=jax.random.key(0), epsilon=0.1)
  assert s[0].shape == (32,) and s[1].shape == (64,)
  np.testing.assert_allclose([float(jnp.mean(a)) for a in s], [1.0, 1.0], rtol=1e-5)
  assert all(bool(jnp.all(a >= 0)) for a in s)


# --------------------------------------------------------------------------- adversarial


def test_inner_attacks_stay_in_ball_and_box():
  p = _init_mlp(jax.random.key(0), d=16, h=12, c=4)
  fn = jax.tree_util.Partial(lambda q, z: 4.0 * _mlp(q, z), p)
  x = jax.random.uniform(jax.random.key(1), (32, 16))
  y = jnp.argmax(fn(x), -1)  # attack the model's own predictions
  eps = 0.1
  key = jax.random.key(0)
  ce = lambda z: float(jnp.mean(-jnp.take_along_axis(  # noqa: E731
      jax.nn.log_softmax(fn(z)), y[:, None], 1)))
  advs = {"fgsm": R.fgsm_adversary(fn, x, y, key=key, epsilon=eps),
          "pgd": R.pgd_adversary(fn, x, y, key=key, epsilon=eps, num_steps=5),
          "trades": R.trades_adversary(fn, x, key=key, epsilon=eps, num_steps=5)}
  for name, xa in advs.items():
    assert float(jnp.max(jnp.abs(xa - x))) <= eps + 1e-6, name
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0, name
    assert float(jnp.max(jnp.abs(xa - x))) > 0.5 * eps, name
  assert ce(advs["pgd"]) > ce(x) + 0.1
  assert ce(advs["pgd"]) >= ce(advs["fgsm"]) - 1e-3
  assert ce(advs["fgsm"]) > ce(x)
  # Per-feature epsilon broadcast and no box.
  eps_f = jnp.linspace(0.0, 0.2, 16)
  xa = R.pgd_adversary(fn, x, y, key=key, epsilon=eps_f, num_steps=3, input_range=None)
  assert bool(jnp.all(jnp.abs(xa - x) <= eps_f + 1e-6))


def test_adversarial_losses_grads_treat_attack_as_constant(x64):
  p = _init_mlp(jax.random.key(0), dtype=jnp.float64)
  x, y = _data(jnp.float64)
  key = jax.random.key(1)
  for loss_fn in (R.fgsm_training, R.pgd_training, R.trades):
    def loss(q, loss_fn=loss_fn):
      return loss_fn(lambda z: _mlp(q, z), x, y, key=key, epsilon=0.1, num_steps=3) \
          if loss_fn is not R.fgsm_training else \
          loss_fn(lambda z: _mlp(q, z), x, y, key=key, epsilon=0.1)
    g = jax.grad(loss)(p)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in g.values())
  # Danskin: the gradient equals that of CE at the fixed adversarial point.
  x_adv = R.pgd_adversary(lambda z: _mlp(p, z), x, y, key=key, epsilon=0.1, num_steps=3)
  g_fixed = jax.grad(lambda q: jnp.mean(
      -jnp.take_along_axis(jax.nn.log_softmax(_mlp(q, x_adv)), y[:, None], 1)))(p)
  g = jax.grad(lambda q: R.pgd_training(lambda z: _mlp(q, z), x, y, key=key, epsilon=0.1,
                                        num_steps=3))(p)
  np.testing.assert_allclose(_flat(g), _flat(g_fixed), rtol=1e-10)
  _check_param_grad_fd(lambda q: jnp.mean(
      -jnp.take_along_axis(jax.nn.log_softmax(_mlp(q, x_adv)), y[:, None], 1)), p)


def test_trades_zero_epsilon_is_cross_entropy():
  p = _init_mlp(jax.random.key(0))
  x, y = _data()
  fn = lambda z: _mlp(p, z)  # noqa: E731
  ce = jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(fn(x)), y[:, None], 1))
  got = R.trades(fn, x, y, key=jax.random.key(0), epsilon=0.0, num_steps=2, input_range=None)
  # The 0.001 N(0, I) start is projected back onto the zero-radius ball.
  np.testing.assert_allclose(got, ce, rtol=1e-6)


def test_regularizers_jit_eager_and_one_trace():
  import chex
  p = _init_mlp(jax.random.key(0))
  x, y = _data()
  fn = jax.tree_util.Partial(_mlp, p)
  vals = []
  from rattr_jax.regularizers import _gradient_alignment as ga
  ga._gradient_alignment.clear_cache()
  for eps in (0.1, 0.2, 0.3):
    vals.append(R.gradient_alignment(fn, gradient, x, y, key=jax.random.key(0), epsilon=eps))
  assert ga._gradient_alignment._cache_size() == 1  # epsilon stays traced: no recompiles
  with jax.disable_jit():
    eager = R.gradient_alignment(fn, gradient, x, y, key=jax.random.key(0), epsilon=0.3)
  np.testing.assert_allclose(eager, vals[-1], rtol=1e-5)
  chex.assert_trees_all_equal_shapes(vals[0], jnp.zeros(()))
