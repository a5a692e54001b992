"""Models (activations, fast conv, pure functions) and dataset loaders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rattr_jax
from rattr_jax import attribution as A
from rattr_jax import data as D
from rattr_jax import models


def test_softplus_beta_formula_and_limit():
  z = jnp.linspace(-3, 3, 13)
  act = models.Activation.softplus(4.0)
  np.testing.assert_allclose(act(z), np.log1p(np.exp(4.0 * np.asarray(z))) / 4.0, rtol=1e-5)
  np.testing.assert_allclose(models.Activation.softplus(1e3)(z), jax.nn.relu(z), atol=1e-3)
  with pytest.raises(ValueError, match="name"):
    models.Activation("gelu2")
  with pytest.raises(ValueError, match="beta"):
    models.Activation("softplus", 0.0)


@pytest.mark.parametrize("beta", [0.5, 3.0, 10.0, 100.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_beta_derivatives_are_sigmoid_and_its_derivative(x64, beta, dtype):
  # Closed forms: f' = sigmoid(beta z), f'' = beta s (1 - s); z = 0 exactly and
  # |beta z| past exp's float32 range included. Also through forward-over-reverse.
  z = np.concatenate([np.linspace(-8, 8, 161), [0.0, -1e-30, 1e-30, -60.0, 60.0]]).astype(dtype)
  act = models.Activation.softplus(beta)
  bz = beta * z.astype(np.float64)
  s = 1 / (1 + np.exp(-bz))
  tol = dict(rtol=2e-6, atol=2e-7) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
  f = act(jnp.asarray(z))
  assert f.dtype == z.dtype
  np.testing.assert_allclose(f, np.logaddexp(bz, 0) / beta, **tol)
  d1 = jax.vmap(jax.grad(act))(jnp.asarray(z))
  np.testing.assert_allclose(d1, s, **tol)
  d2 = jax.vmap(jax.grad(jax.grad(act)))(jnp.asarray(z))
  np.testing.assert_allclose(d2, beta * s * (1 - s), **{k: v * beta for k, v in tol.items()})
  fwd_rev = jax.vmap(lambda t: jax.jvp(jax.grad(act), (t,), (jnp.ones_like(t),))[1])(jnp.asarray(z))
  np.testing.assert_allclose(fwd_rev, d2, rtol=1e-6 if dtype == "float32" else 1e-12, atol=1e-30)


def test_log1p_unit_matches_float64_log1p_to_2_eps():
  # The float32 softplus's log1p of exp(-beta |z|) in [0, 1]: relative error against
  # float64 numpy, tiny (normal: XLA:CPU flushes subnormals) arguments included (no
  # cancellation), and the switch back.
  from rattr_jax.models import _activation
  t = np.concatenate([np.linspace(0, 1, 200001), np.logspace(-37, 0, 2000)]).astype(np.float32)
  got = np.asarray(jax.jit(_activation._log1p_unit)(jnp.asarray(t)), np.float64)
  want = np.log1p(t.astype(np.float64))
  assert got[0] == 0.0
  rel = np.abs(got[1:] - want[1:]) / want[1:]
  assert rel.max() < 2 * np.finfo(np.float32).eps, rel.max()
  z = jnp.linspace(-20, 20, 4001, dtype=jnp.float32)
  act = models.Activation.softplus(3.0)
  series = act(z)
  old = _activation.LOG1P_SERIES
  _activation.LOG1P_SERIES = False
  try:
    plain = act(z)
  finally:
    _activation.LOG1P_SERIES = old
  np.testing.assert_allclose(series, plain, rtol=4 * np.finfo(np.float32).eps, atol=0)


@pytest.mark.parametrize("cin,k,padding", [(1, 5, "SAME"), (3, 3, "SAME"), (4, 3, "VALID"),
                                           (2, 3, ((2, 0), (1, 1))), (8, 3, "SAME"),
                                           (9, 5, ((2, 1), (0, 2))),
                                           (1, 3, ((-1, 1), (0, 1))), (20, 3, ((1, -1), (1, 1)))])
def test_fast_conv_matches_lax_to_second_order(x64, cin, k, padding):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, cin), jnp.float64)
  w = jax.random.normal(jax.random.key(1), (k, k, cin, 3), jnp.float64)

  def loss(impl):
    def f(x, w):
      y = models.conv2d(x, w, padding=padding, impl=impl)
      return jnp.sum(jnp.sin(y) ** 2)
    return f

  for impl in ("fast",):
    np.testing.assert_allclose(models.conv2d(x, w, padding=padding, impl=impl),
                               models.conv2d(x, w, padding=padding, impl="lax"), rtol=1e-10)
    g_fast = jax.grad(loss(impl), argnums=(0, 1))(x, w)
    g_lax = jax.grad(loss("lax"), argnums=(0, 1))(x, w)
    for a, b in zip(g_fast, g_lax):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    # Second order: gradient of the squared input-gradient norm (attack objective)
    # with respect to the input, and with respect to the kernel (gradient
    # regularizers in training, e.g. gradient alignment).
    h = lambda impl: jax.grad(lambda x: jnp.sum(jax.grad(loss(impl))(x, w) ** 2))(x)
    np.testing.assert_allclose(h(impl), h("lax"), rtol=1e-8, atol=1e-9)
    hw = lambda impl: jax.grad(lambda w: jnp.sum(jax.grad(loss(impl))(x, w) ** 2))(w)
    np.testing.assert_allclose(hw(impl), hw("lax"), rtol=1e-8, atol=1e-9)
    # Forward mode (the fast convolution is a primitive with a JVP): tangents, and
    # forward-over-reverse Hessian-vector products in (x, w) jointly, equal lax's and
    # reverse-over-reverse's; third order: the weight gradient of |H v|^2.
    vx = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
    vw = jax.random.normal(jax.random.key(3), w.shape, jnp.float64)
    conv = lambda impl: lambda x, w: models.conv2d(x, w, padding=padding, impl=impl)
    for a, b in zip(jax.jvp(conv(impl), (x, w), (vx, vw)), jax.jvp(conv("lax"), (x, w), (vx, vw))):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    hvp = lambda impl, x, w: jax.jvp(jax.grad(loss(impl), (0, 1)), (x, w), (vx, vw))[1]
    rr = jax.grad(lambda x, w: sum(jnp.vdot(a, b) for a, b in zip(
        jax.grad(loss(impl), (0, 1))(x, w), (vx, vw))), (0, 1))(x, w)
    for a, b, c in zip(hvp(impl, x, w), hvp("lax", x, w), rr):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
      np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-10)
    t3 = lambda impl: jax.grad(lambda w: sum(jnp.sum(h ** 2) for h in hvp(impl, x, w)))(w)
    np.testing.assert_allclose(t3(impl), t3("lax"), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("unrolled", [8, 0])
@pytest.mark.parametrize("cin", [1, 8])
@pytest.mark.parametrize("jit", [False, True])
def test_fast_conv_vmap_matches_lax_and_per_example(x64, monkeypatch, cin, jit, unrolled):
  # vmap over the input (folded into the batch), over input and kernel (one
  # convolution per mapped pair, or with `MAPPED_KERNELS_UNROLLED` 0 a grouped
  # one) and over the kernel alone, with the mapped axis first or not; and
  # gradients under vmap with respect to input and kernel.
  from rattr_jax.models import _conv
  monkeypatch.setattr(_conv, "MAPPED_KERNELS_UNROLLED", unrolled)
  x = jax.random.normal(jax.random.key(0), (3, 2, 6, 5, cin), jnp.float64)
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, cin, 4), jnp.float64)
  conv = lambda impl: lambda x, w: models.conv2d(x, w, impl=impl)
  t = jax.jit if jit else (lambda f: f)
  for in_axes, args in (((0, None), (x, w[0])), ((0, 0), (x, w)),
                        ((1, None), (jnp.moveaxis(x, 0, 1), w[0])), ((None, 0), (x[0], w))):
    got = t(jax.vmap(conv("fast"), in_axes))(*args)
    np.testing.assert_allclose(got, jax.vmap(conv("lax"), in_axes)(*args), rtol=1e-10, atol=1e-12)
    loss = lambda impl: lambda x, w: jnp.sum(jnp.tanh(conv(impl)(x, w)) ** 2)
    for a, b in zip(t(jax.vmap(jax.grad(loss("fast"), (0, 1)), in_axes))(*args),
                    jax.vmap(jax.grad(loss("lax"), (0, 1)), in_axes)(*args)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
  # batched = per-example: one image at a time through vmap equals the whole batch
  xb = x[0]
  per = jax.vmap(lambda xi: conv("fast")(xi[None], w[0])[0])(xb)
  np.testing.assert_allclose(per, conv("fast")(xb, w[0]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hw,k,stride,padding", [
    ((8, 8), 3, (2, 2), ((1, 1), (1, 1))),  # ResNet's stage-entry convolution
    ((8, 8), 1, (2, 2), "VALID"),           # ResNet's shortcut: a subsample and a 1x1
    ((9, 7), 3, (2, 2), "SAME"),            # odd sizes: XLA's SAME padding for strides
    ((11, 10), 5, (3, 2), ((2, 1), (0, 2))),
    ((7, 9), 4, (2, 3), "VALID"),
    ((6, 6), 2, (2, 2), "SAME"),
])
def test_strided_fast_conv_matches_lax_to_second_order(x64, hw, k, stride, padding):
  # impl="fast" rewrites a strided convolution as a stride-1 one (space-to-depth, or a
  # subsample for 1x1), which stays on XLA:CPU's fast path inside loops; the values and
  # the first and second derivatives equal lax's strided convolution.
  x = jax.random.normal(jax.random.key(0), (2, *hw, 3), jnp.float64)
  w = jax.random.normal(jax.random.key(1), (k, k, 3, 4), jnp.float64)
  conv = lambda impl: lambda x, w: models.conv2d(x, w, stride=stride, padding=padding, impl=impl)
  np.testing.assert_allclose(conv("fast")(x, w), conv("lax")(x, w), rtol=1e-10, atol=1e-12)
  loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(conv(impl)(x, w)) ** 2)
  for a, b in zip(jax.grad(loss("fast"), (0, 1))(x, w), jax.grad(loss("lax"), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
  h = lambda impl: jax.grad(lambda x: jnp.sum(jax.grad(loss(impl))(x, w) ** 2))(x)
  np.testing.assert_allclose(h("fast"), h("lax"), rtol=1e-8, atol=1e-9)
  # and a finite difference of the loss along a random direction of the weights
  v = jax.random.normal(jax.random.key(2), w.shape, jnp.float64)
  fd = (loss("fast")(x, w + 1e-5 * v) - loss("fast")(x, w - 1e-5 * v)) / 2e-5
  np.testing.assert_allclose(jnp.vdot(jax.grad(loss("fast"), 1)(x, w), v), fd, rtol=1e-6)


def test_resnet_fast_and_lax_convolutions_agree():
  # the ResNet-18's strided convolutions take the rewrite under conv_impl="fast"
  kw = dict(input_shape=(16, 16, 3), num_classes=4, widths=(4, 8, 8, 8), seed=0)
  fast = models.create_model("resnet18", conv_impl="fast", **kw)
  lax_ = models.create_model("resnet18", conv_impl="lax", **kw)
  x = jax.random.uniform(jax.random.key(3), (3, 16, 16, 3))
  f, g = models.as_fn(fast), models.as_fn(lax_)
  np.testing.assert_allclose(f(x), g(x), rtol=1e-4, atol=1e-5)
  gf = jax.grad(lambda x: jnp.sum(f(x)[:, 0]))(x)
  gl = jax.grad(lambda x: jnp.sum(g(x)[:, 0]))(x)
  np.testing.assert_allclose(gf, gl, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(gl))))


@pytest.mark.parametrize("cin", [3, 16])  # few-channel / blocked canonical-convolution weight gradient
def test_fast_conv_weight_gradient_finite_differences(x64, cin):
  x = jax.random.normal(jax.random.key(0), (3, 9, 8, cin), jnp.float64)
  w = jax.random.normal(jax.random.key(1), (3, 3, cin, 5), jnp.float64)
  v = jax.random.normal(jax.random.key(2), w.shape, jnp.float64)
  f = lambda w: jnp.sum(jnp.tanh(models.conv2d(x, w, padding=((1, 2), (0, 1)), impl="fast")) ** 2)
  h = 1e-5
  fd = (f(w + h * v) - f(w - h * v)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(jax.grad(f)(w), v), fd, rtol=1e-6)  # O(h^2) = 1e-8 rel.


@pytest.mark.parametrize("out_chunk", [16, 0])
@pytest.mark.parametrize("bsz,cin,cout,padding", [(37, 8, 35, ((1, 2), (0, 1))),
                                                  (20, 9, 17, "SAME"), (17, 12, 16, "VALID")])
def test_fast_conv_blocked_weight_gradient_matches_lax_and_finite_differences(
    x64, monkeypatch, bsz, cin, cout, padding, out_chunk):
  # Batch above WEIGHT_GRAD_FEATURE_CHUNK or output channels above the output block
  # (16, as on YNNPACK; 0: none, as on Eigen): the weight gradient is summed over
  # blocks of batch elements and concatenated over blocks of channels (ragged last
  # blocks here); it must equal autodiff's own and the one-convolution form.
  from rattr_jax.models import _conv
  monkeypatch.setattr(_conv, "WEIGHT_GRAD_OUT_CHUNK", out_chunk)
  assert bsz > _conv.WEIGHT_GRAD_FEATURE_CHUNK or cout > _conv._weight_grad_out_chunk() > 0
  x = jax.random.normal(jax.random.key(0), (bsz, 6, 7, cin), jnp.float64)
  w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout), jnp.float64)
  loss = lambda impl: lambda w: jnp.sum(jnp.tanh(models.conv2d(x, w, padding=padding,
                                                                impl=impl)) ** 2)
  g_fast, g_lax = jax.grad(loss("fast"))(w), jax.grad(loss("lax"))(w)
  np.testing.assert_allclose(g_fast, g_lax, rtol=1e-10, atol=1e-10)
  pad = _conv.explicit_padding(padding, (3, 3))
  y = _conv._lax_conv(x, w, pad)
  g = jnp.cos(y)
  one = _conv._weight_grad(x, g, (3, 3), pad, blocked=False)
  np.testing.assert_allclose(_conv._weight_grad(x, g, (3, 3), pad), one, rtol=1e-10, atol=1e-10)
  v = jax.random.normal(jax.random.key(2), w.shape, jnp.float64)
  h = 1e-5
  fd = (loss("fast")(w + h * v) - loss("fast")(w - h * v)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(g_fast, v), fd, rtol=1e-5)  # O(h^2) truncation


@pytest.mark.parametrize("flags,eigen,chunk", [
    ("", False, 16), ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution", True, 0),
    ("--foo=1 --xla_cpu_experimental_ynn_fusion_type=", True, 0),
    ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
     "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution", False, 16),
    ("--xla_cpu_experimental_ynn_fusion_type=-individual_dot", False, 16)])
def test_weight_gradient_output_blocks_follow_the_convolution_backend(monkeypatch, flags,
                                                                      eigen, chunk):
  from rattr_jax.models import _conv
  monkeypatch.setenv("XLA_FLAGS", flags)
  assert _conv.convolutions_on_eigen() is eigen
  assert _conv._weight_grad_out_chunk() == chunk
  monkeypatch.setattr(_conv, "WEIGHT_GRAD_OUT_CHUNK", 8)
  assert _conv._weight_grad_out_chunk() == 8


@pytest.mark.parametrize("cin", [1, 3, 16])
def test_fast_conv_gradients_inside_scan_match_lax_float32(cin):
  # Inside `lax.scan` XLA:CPU compiles autodiff's own weight-gradient differently
  # (`_conv._weight_grad`); the custom one must give the same numbers there.
  x = jax.random.normal(jax.random.key(0), (4, 10, 10, cin))
  w = jax.random.normal(jax.random.key(1), (3, 3, cin, 8)) * 0.3

  def run(impl):
    def body(w, xs):
      loss = lambda w, x: jnp.sum(jax.nn.softplus(models.conv2d(x, w, impl=impl)) ** 2)
      gx, gw = jax.grad(loss, argnums=(1, 0))(w, xs)
      return w - 1e-3 * gw, (gw, gx)
    return jax.jit(lambda w: jax.lax.scan(body, w, jnp.stack([x, 0.5 * x])))(w)

  for a, b in zip(jax.tree.leaves(run("fast")), jax.tree.leaves(run("lax"))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def _onednn_calls(fn, *args) -> int:
  return jax.jit(fn).lower(*args).as_text().count("__onednn$convolution")


@pytest.mark.parametrize("cin,cout,k,padding", [
    (8, 16, 3, "SAME"), (16, 32, 5, "SAME"), (5, 7, 3, "VALID"), (6, 4, 1, "SAME"),
    (9, 3, 5, ((2, 1), (0, 2))), (8, 8, 7, ((3, 3), (3, 3))), (12, 5, 3, ((0, 2), (1, 0))),
    (1, 16, 5, "SAME"), (3, 8, 3, ((1, 0), (2, 1)))])
def test_onednn_convolution_matches_lax_to_second_order_float32(monkeypatch, cin, cout, k,
                                                                padding):
  # With oneDNN (`_conv.ONEDNN`), the fast primitive's forward and input-gradient
  # convolutions are XLA:CPU's `__onednn$convolution` custom call: value, input and kernel
  # gradients, forward mode and the second-order terms the regularizers train through
  # equal lax's to float32 rounding; the weight gradients stay XLA convolutions. Input
  # layers (`_conv.FEW_CHANNELS`) take oneDNN for the forward only (their input gradient
  # is `_col2im_input_grad`).
  from rattr_jax.models import _conv
  if not _conv.onednn_available():
    pytest.skip("this jaxlib has no oneDNN convolutions")
  monkeypatch.setattr(_conv, "ONEDNN", True)
  x = jax.random.normal(jax.random.key(0), (3, 11, 9, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) / np.sqrt(k * k * cin)
  conv = lambda impl: lambda x, w: models.conv2d(x, w, padding=padding, impl=impl)
  loss = lambda impl: lambda x, w: jnp.sum(jax.nn.softplus(conv(impl)(x, w)) ** 2)

  def close(a, b, rtol=3e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(v))))

  assert _onednn_calls(conv("fast"), x, w) == 1
  assert _onednn_calls(conv("lax"), x, w) == 0
  close(jax.jit(conv("fast"))(x, w), conv("lax")(x, w))
  grads = lambda impl: jax.grad(loss(impl), (0, 1))
  few = cin <= _conv.FEW_CHANNELS
  assert _onednn_calls(grads("fast"), x, w) == (1 if few else 2)  # forward, input gradient
  close(jax.jit(grads("fast"))(x, w), grads("lax")(x, w))
  vx = jax.random.normal(jax.random.key(2), x.shape)
  vw = jax.random.normal(jax.random.key(3), w.shape) / np.sqrt(k * k * cin)
  close(jax.jit(lambda x, w: jax.jvp(conv("fast"), (x, w), (vx, vw)))(x, w),
        jax.jvp(conv("lax"), (x, w), (vx, vw)))
  second = lambda impl: jax.grad(lambda w: jnp.sum(jax.grad(loss(impl))(x, w) ** 2))
  close(jax.jit(second("fast"))(w), second("lax")(w), rtol=1e-4)
  hvp = lambda impl: lambda x, w: jax.jvp(grads(impl), (x, w), (vx, vw))[1]
  close(jax.jit(hvp("fast"))(x, w), hvp("lax")(x, w), rtol=1e-4)
  # vmapped over models (input and kernel mapped): one oneDNN convolution per pair
  xs, ws = jnp.stack([x, -x]), jnp.stack([w, 2 * w])
  assert _onednn_calls(jax.vmap(conv("fast")), xs, ws) == 2
  close(jax.jit(jax.vmap(conv("fast")))(xs, ws), jax.vmap(conv("lax"))(xs, ws))


def test_onednn_convolutions_setting_is_scoped_and_keeps_programs_serializable(monkeypatch):
  # `models.onednn_convolutions` sets the lowering of the block's new programs and restores
  # the module setting after it (also on an exception). Under False a conv net's training
  # gradient has no oneDNN custom call, so it can be serialized (what the persistent
  # compilation cache stores) and loaded back with the same results.
  from jax.experimental import serialize_executable
  from rattr_jax.models import _conv
  monkeypatch.setattr(_conv, "ONEDNN", "auto")
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 8))
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8)) / 8.0
  def grads():  # a new function each time: JAX caches a function's lowering
    loss = lambda x, w: jnp.sum(jnp.tanh(models.conv2d(x, w, impl="fast")))
    return lambda x, w: jax.grad(loss, (0, 1))(x, w)
  grad = grads()
  with models.onednn_convolutions(False):
    assert _conv.ONEDNN is False and not models.onednn_in_use()
    assert _onednn_calls(grad, x, w) == 0
    compiled = jax.jit(grad).lower(x, w).compile()
  assert _conv.ONEDNN == "auto"
  loaded = serialize_executable.deserialize_and_load(*serialize_executable.serialize(compiled))
  for a, b in zip(loaded(x, w), compiled(x, w)):
    np.testing.assert_array_equal(a, b)
  if _conv.onednn_available():
    with models.onednn_convolutions(True):
      assert models.onednn_in_use() and _onednn_calls(grads(), x, w) == 2  # forward, dx
  with pytest.raises(KeyError):
    with models.onednn_convolutions(False):
      raise KeyError("inside")
  assert _conv.ONEDNN == "auto"
  with pytest.raises(ValueError, match="`setting`"):
    with models.onednn_convolutions("yes"):
      pass


def test_no_onednn_while_the_persistent_compilation_cache_is_on(tmp_path, monkeypatch):
  # JAX serializes every program it compiles while the cache is on; oneDNN programs cannot
  # be, so convolutions are XLA's then, even under onednn_convolutions(True).
  from rattr_jax.models import _conv
  monkeypatch.setattr(_conv, "ONEDNN", "auto")
  assert not models.persistent_cache_enabled()
  x, w = jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 8, 8))
  def fresh():  # a new function each time: JAX caches a function's lowering
    return lambda x, w: models.conv2d(x, w, impl="fast") * 2.0
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))  # conftest restores it
  assert models.persistent_cache_enabled() and not models.onednn_in_use()
  with models.onednn_convolutions(True):
    assert not models.onednn_in_use() and _onednn_calls(fresh(), x, w) == 0
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    assert not models.persistent_cache_enabled()
    assert models.onednn_in_use() == _conv.onednn_available()
  finally:
    jax.config.update("jax_enable_compilation_cache", True)


def test_onednn_takes_only_float32_small_window_convolutions(monkeypatch, x64):
  # float64 (finite-difference tests) and window-sized weight-gradient convolutions keep
  # XLA's kernels; ONEDNN=False turns the custom call off everywhere.
  from rattr_jax.models import _conv
  if not _conv.onednn_available():
    pytest.skip("this jaxlib has no oneDNN convolutions")
  monkeypatch.setattr(_conv, "ONEDNN", True)
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 8), jnp.float32)
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8), jnp.float32)
  conv = lambda x, w: models.conv2d(x, w, impl="fast")
  assert _onednn_calls(conv, x.astype(jnp.float64), w.astype(jnp.float64)) == 0
  wgrad = lambda x, w: jax.grad(lambda w: jnp.sum(conv(x, w) ** 2))(w)
  text = jax.jit(wgrad).lower(x, w).as_text()
  assert text.count("__onednn$convolution") == 1 and "convolution(" in text.replace(
      "__onednn$convolution", "")  # the forward on oneDNN, the weight gradient not
  assert not _conv._onednn_suits(jax.ShapeDtypeStruct((8, 12, 12, 4), jnp.float32),
                                 jax.ShapeDtypeStruct((12, 12, 4, 8), jnp.float32),
                                 jax.ShapeDtypeStruct((8, 3, 3, 8), jnp.float32))
  monkeypatch.setattr(_conv, "ONEDNN", False)
  assert _onednn_calls(conv, x, w) == 0
  np.testing.assert_allclose(jax.jit(conv)(x, w), models.conv2d(x, w, impl="lax"), rtol=1e-5,
                             atol=1e-5)


def _first_max_selection(x):
  """numpy: ``P[b, i, j, c] -> (row, col)`` of each 2x2 window's FIRST maximum (row-major)."""
  b, h, w, c = x.shape
  win = x[:, :h - h % 2, :w - w % 2].reshape(b, h // 2, 2, w // 2, 2, c)
  win = win.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)
  k = win.argmax(-1)  # numpy's argmax: the first maximum
  return 2 * np.arange(h // 2)[None, :, None, None] + k // 2, \
      2 * np.arange(w // 2)[None, None, :, None] + k % 2


@pytest.mark.parametrize("form,value", [("pairs", "reduce"), ("windows", "reduce"),
                                        ("pairs", "select"), ("pairs", "gather")])
@pytest.mark.parametrize("jit", [False, True])
def test_max_pool2_value_gradient_and_hessian_follow_the_first_maximum(monkeypatch, form,
                                                                       value, jit):
  # Value: lax.reduce_window's max (odd trailing row / column dropped), with either
  # form of the undifferentiated value. Derivatives, to third order: the first
  # maximum of each window in row-major order takes the whole derivative (PyTorch's
  # rule), on integer inputs where many windows tie.
  from rattr_jax.models import _layers
  monkeypatch.setattr(_layers, "POOL_FORWARD", form)
  monkeypatch.setattr(_layers, "POOL_VALUE", value)  # how the rule computes its primal output
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, (2, 7, 9, 3)).astype(np.float32)
  pool = jax.jit(models.max_pool2) if jit else models.max_pool2
  ref = jax.lax.reduce_window(jnp.asarray(x), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                              "VALID")
  np.testing.assert_array_equal(pool(jnp.asarray(x)), ref)
  nan = x.copy()
  nan[0, 0, 1, 0] = np.nan
  assert np.isnan(pool(jnp.asarray(nan))[0, 0, 0, 0])
  assert np.isnan(jax.jvp(pool, (jnp.asarray(nan),), (jnp.ones_like(nan),))[0][0, 0, 0, 0])
  rows, cols = _first_max_selection(x)
  bi, ci = np.arange(2)[:, None, None, None], np.arange(3)[None, None, None, :]
  c = rng.normal(size=ref.shape).astype(np.float32)
  want = np.zeros_like(x)
  want[bi, rows, cols, ci] = c
  g = jax.grad(lambda v: jnp.sum(c * pool(v)))(jnp.asarray(x))
  np.testing.assert_array_equal(g, want)
  t = rng.normal(size=x.shape).astype(np.float32)
  _, tout = jax.jvp(pool, (jnp.asarray(x),), (jnp.asarray(t),))
  np.testing.assert_array_equal(tout, t[bi, rows, cols, ci])
  # Hessian-vector product of sum(c * pool(v)^2): 2 c at the selected element, times t there.
  hvp = jax.jvp(jax.grad(lambda v: jnp.sum(c * pool(v) ** 2)), (jnp.asarray(x),),
                (jnp.asarray(t),))[1]
  want_h = np.zeros_like(x)
  want_h[bi, rows, cols, ci] = 2 * c * t[bi, rows, cols, ci]
  np.testing.assert_allclose(hvp, want_h, rtol=1e-6, atol=1e-6)
  # Third order (JAX differentiates the rule's own primal output): D^3 of
  # sum(c * pool(v)^3) / 3 along (t, t) is 2 c t^2 at the selected element.
  d3 = jax.jvp(lambda v: jax.jvp(jax.grad(lambda u: jnp.sum(c * pool(u) ** 3) / 3), (v,),
                                 (jnp.asarray(t),))[1], (jnp.asarray(x),), (jnp.asarray(t),))[1]
  want_3 = np.zeros_like(x)
  want_3[bi, rows, cols, ci] = 2 * c * t[bi, rows, cols, ci] ** 2
  np.testing.assert_allclose(d3, want_3, rtol=1e-5, atol=1e-5)
  # vmapped (several models per program, per-sample maps): the same gradients.
  gv = jax.vmap(jax.grad(lambda v, cc: jnp.sum(cc * pool(v[None])[0])))(jnp.asarray(x), c)
  np.testing.assert_array_equal(gv, want)


def test_zoo_shapes_and_surrogate():
  x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
  for name in ("mlp", "cnn"):
    m = models.create_model(name, input_shape=(28, 28, 1), num_classes=10)
    fn = models.as_fn(m)
    assert fn(x).shape == (3, 10)
    sur = models.surrogate_fn(m, beta=200.0)
    np.testing.assert_allclose(sur(x), fn(x), atol=0.05)
    soft = models.as_fn(m, activation="softplus:2")
    assert not np.allclose(soft(x), fn(x), atol=1e-3)
  lenet = models.create_model("lenet", input_shape=(32, 32, 3), num_classes=10)
  assert models.as_fn(lenet)(jnp.ones((2, 32, 32, 3))).shape == (2, 10)
  with pytest.raises(ValueError, match="`name`"):
    models.create_model("vgg", input_shape=(32, 32, 3), num_classes=10)


def test_zoo_widths_are_settings_and_validated():
  m = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, widths=(4, 6, 12))
  assert m.conv1.kernel.shape == (5, 5, 1, 4) and m.conv2.kernel.shape == (5, 5, 4, 6)
  assert m.fc1.kernel.shape == (7 * 7 * 6, 12)
  le = models.create_model("lenet", input_shape=(32, 32, 3), num_classes=10,
                           widths=(4, 5, 6, 7, 9))
  assert [le.conv4.kernel.shape[3], le.fc1.kernel.shape[1]] == [7, 9]
  assert models.as_fn(le)(jnp.ones((2, 32, 32, 3))).shape == (2, 10)
  mlp = models.create_model("mlp", input_shape=(30,), num_classes=3, widths=(7, 5, 4))
  assert [l.kernel.shape[1] for l in mlp.hidden] == [7, 5, 4]
  default = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10)
  assert default.conv2.kernel.shape[3] == models.WIDTHS["cnn"][1][1] == 32
  for name, shape, bad in [("cnn", (28, 28, 1), (4, 6)), ("cnn", (28, 28, 1), (4, 0, 8)),
                           ("lenet", (32, 32, 3), (4, 5, 6, 7, 2.5)), ("mlp", (30,), ()),
                           ("resnet18", (8, 8, 3), (2, 2, 2)), ("cnn", (28, 28, 1), 16)]:
    with pytest.raises(ValueError, match="`widths`"):
      models.create_model(name, input_shape=shape, num_classes=10, widths=bad)


@pytest.mark.slow
def test_resnet_inference_mode_examples_do_not_interact():
  m = models.create_model("resnet18", input_shape=(8, 8, 3), num_classes=4, width=2)
  fn = models.as_fn(m)
  x = jax.random.uniform(jax.random.key(3), (3, 8, 8, 3))
  batched = A.gradient(fn, x, 1)
  per = jnp.concatenate([A.gradient(fn, x[i:i + 1], 1) for i in range(3)])
  np.testing.assert_allclose(batched, per, rtol=1e-4, atol=1e-6)
  # Train-mode apply returns updated batch statistics explicitly.
  apply, state = models.functional(m, train=True)
  before = [np.array(a) for a in jax.tree.leaves(state)]
  logits, new_state = apply(state, x)
  for a, b in zip(before, jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)  # the input state is not mutated
  assert logits.shape == (3, 4)
  assert not all(np.allclose(a, b) for a, b in zip(before,
                                                     jax.tree.leaves(new_state)))


def test_as_fn_is_a_pytree_that_reuses_compilation():
  from rattr_jax.attribution import _gradient
  x = jnp.ones((2, 28, 28, 1))
  _gradient._gradient.clear_cache()
  for seed in range(3):
    fn = models.as_fn(models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10,
                                          seed=seed))
    A.gradient(fn, x, 0)
  assert _gradient._gradient._cache_size() == 1


# -------------------------------------------------------------------- data --
def test_embedded_default():
  d = D.load_dataset()
  assert d.x_train.shape == (4000, 28, 28, 1) and d.x_test.shape == (1000, 28, 28, 1)
  assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
  assert set(np.unique(d.y_test)) == set(range(10))
  assert np.bincount(d.y_test).tolist() == [100] * 10  # stratified
  d2 = D.load_dataset(seed=0)
  np.testing.assert_array_equal(d.x_train[:5], d2.x_train[:5])


@pytest.mark.parametrize("name,shape", [("digits", (8, 8, 1)), ("breast_cancer", (30,)),
                                        ("wine", (13,))])
def test_sklearn_sets(name, shape):
  d = D.load_dataset(name)
  assert d.input_shape == shape
  assert d.x_train.min() >= 0 and d.x_train.max() <= 1


def test_local_files_written_by_test(tmp_path, monkeypatch):
  monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
  y = np.repeat(np.arange(10), 5).astype(np.uint8)
  np.savez(tmp_path / "mnist_t10k.npz", x=x, y=y)
  d = D.load_dataset("mnist", data_dir=tmp_path)
  assert d.x_train.shape == (40, 28, 28, 1) and d.x_test.shape == (10, 28, 28, 1)
  assert d.source == str(tmp_path / "mnist_t10k.npz")
  c = {"x_train": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
       "y_train": np.arange(20) % 10, "x_test": rng.integers(0, 256, (10, 32, 32, 3),
                                                             dtype=np.uint8),
       "y_test": np.arange(10)}
  np.savez(tmp_path / "cifar10.npz", **c)
  monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path))
  d = D.load_dataset("cifar10")
  # the stored split, in a seeded random order (the offline copy's test split is sorted)
  order = np.argsort(d.y_test)
  np.testing.assert_array_equal(d.y_test[order], c["y_test"])
  np.testing.assert_allclose(d.x_test[order], c["x_test"] / 255.0, rtol=1e-6)
  assert not np.array_equal(d.y_test, c["y_test"])
  np.testing.assert_array_equal(D.load_dataset("cifar10").y_test, d.y_test)  # same seed
  assert not np.array_equal(D.load_dataset("cifar10", seed=1).y_test, d.y_test)


def test_shared_data_when_present():
  import os
  if not os.path.exists("../shared/data/mnist_t10k.npz"):
    pytest.skip("../shared/data not present")
  d = D.load_dataset("mnist", data_dir="../shared/data")
  assert d.x_train.shape == (8000, 28, 28, 1) and d.x_test.shape == (2000, 28, 28, 1)


def test_offline_tfds_fails_fast(tmp_path, monkeypatch):
  import time
  from rattr_jax.data import _datasets
  monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(_datasets, "candidate_dirs", lambda data_dir=None: [tmp_path])
  monkeypatch.setattr(_datasets, "network_available", lambda *a, **k: False)
  t0 = time.time()
  with pytest.raises(ValueError, match="data_dir"):
    D.load_dataset("fashion_mnist")
  assert time.time() - t0 < 5
  with pytest.raises(ValueError, match="`name`"):
    D.load_dataset("imagenet")


@pytest.mark.parametrize("setting", ["import_only", "configure", "jax_env", "opt_out",
                                     "backend_first"])
def test_import_changes_no_jax_setting_and_configure_cpu_is_explicit(setting):
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_CPU_ENABLE_ASYNC_DISPATCH", "RATTR_JAX_NO_XLA_FLAGS", "XLA_FLAGS")}
  if setting == "jax_env":
    env["JAX_CPU_ENABLE_ASYNC_DISPATCH"] = "1"
  if setting == "opt_out":
    env["RATTR_JAX_NO_XLA_FLAGS"] = "1"
  code = ("import os, jax\n"
          + ("jax.numpy.ones(2).block_until_ready()\n" if setting == "backend_first" else "")
          + "import rattr_jax\n"
          + ("" if setting == "import_only" else "print(rattr_jax.configure_cpu())\n")
          + "x = jax.numpy.arange(4.0) * 2\n"  # computations still run correctly
          "assert float(x.sum()) == 12.0\n"
          "print(jax.config.read('jax_cpu_enable_async_dispatch'), repr(os.environ.get('XLA_FLAGS')))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.strip().splitlines()
  inline = setting in ("configure", "jax_env")
  # The only XLA flags ever set: YNNPACK off for convolutions and LLVM's full unrolling
  # limited to 8 iterations, by configure_cpu, before the backend starts, unless opted
  # out. JAX's own async-dispatch variable wins over ours.
  both = f"{rattr_jax.EIGEN_CONV_FLAG} {rattr_jax.UNROLL_FLAG}"
  flags = (repr(both) if setting in ("configure", "jax_env") else "None")
  assert out[-1] == f"{setting != 'configure'} {flags}", out
  if setting != "import_only":
    # the heap pad is a C-library setting, applied at any time, unless opted out
    pad = setting != "opt_out" and rattr_jax._xla_flags.heap_settings_supported()
    assert out[0] == str({"inline_dispatch": setting == "configure",
                          "eigen_convolutions": inline, "channel_vectorization": inline,
                          "retain_heap": pad}), out


def test_configure_cpu_retain_heap_keeps_freed_blocks_on_the_heap():
  # glibc gave the memory freed after each XLA:CPU call back to the kernel and the next
  # call faulted it in again (page faults per step: benchmarks/retain_heap.py). With
  # retain_heap a 16 MiB block, and a 48 MiB one (above the 32 MiB mmap threshold: no block
  # is mmapped), come from the heap and stay with it after free; by default (a fresh
  # process: mmap threshold 128 KiB) both are mmapped and unmapped.
  import os
  import subprocess
  import sys
  code = """
import ctypes, sys
import rattr_jax
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
  print("skip"); raise SystemExit
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                            "usmblks", "fsmblks", "uordblks", "fordblks",
                                            "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
print(rattr_jax.configure_cpu(retain_heap=sys.argv[1] == "1")["retain_heap"])
for n in (16 << 20, 48 << 20):
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  info = libc.mallinfo2()
  mmapped = info.hblkhd >= n
  libc.free(p)
  # came from the heap, which still holds at least that much after the free
  print(mmapped, not mmapped and libc.mallinfo2().arena >= n)
"""
  if not rattr_jax._xla_flags.heap_settings_supported():
    pytest.skip("not Linux with glibc")
  env = {k: v for k, v in os.environ.items() if k != "RATTR_JAX_NO_XLA_FLAGS"}
  out = {}
  for on in ("0", "1"):
    out[on] = subprocess.run([sys.executable, "-c", code, on], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
  if out["0"] == ["skip"]:  # pragma: no cover - glibc < 2.33
    pytest.skip("no mallinfo2")
  assert out["1"] == ["True"] + ["False", "True"] * 2, out   # heap blocks, kept after free
  assert out["0"] == ["False"] + ["True", "False"] * 2, out  # mmapped, returned


def test_enable_compilation_cache_writes_and_reuses_entries(tmp_path):
  import os
  import subprocess
  import sys
  code = ("import sys, rattr_jax, jax, jax.numpy as jnp\n"
          "print(rattr_jax.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0))\n"
          "f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)\n"
          "print(float(f(jnp.ones((8, 8))).sum()))\n")
  env = dict(os.environ)
  runs, listings = [], []
  for _ in range(2):
    runs.append(subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], env=env,
                               capture_output=True, text=True, check=True).stdout.split())
    listings.append(sorted(os.listdir(tmp_path / "cache")))
  assert runs[0] == runs[1] and runs[0][0] == str(tmp_path / "cache")
  assert listings[0], "nothing was written to the cache"
  assert listings[1] == listings[0]  # the second run compiled nothing new: it read the cache
  import rattr_jax
  with pytest.raises(ValueError, match="min_compile_time_secs"):
    rattr_jax.enable_compilation_cache(str(tmp_path), min_compile_time_secs=-1)


def test_compilation_cache_with_and_without_onednn_convolutions(tmp_path):
  # A program with a oneDNN convolution cannot be serialized by jaxlib 0.10.2's XLA:CPU
  # (std::bad_alloc, once a segmentation fault). With the persistent cache on, the
  # convolution is XLA's whatever RATTR_JAX_ONEDNN says, and the program is stored
  # without a warning (warnings are errors here); without the cache it is oneDNN's.
  import os
  import subprocess
  import sys
  from rattr_jax.models import _conv
  if not _conv.onednn_available():
    pytest.skip("this jaxlib has no oneDNN convolutions")
  code = ("import sys, warnings, rattr_jax, jax, jax.numpy as jnp\n"
          "warnings.simplefilter('error')\n"
          "rattr_jax.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0)\n"
          "from rattr_jax.models import conv2d\n"
          "def doubled(x, w):\n"
          "  return conv2d(x, w, impl='fast') * 2.0\n"
          "f = jax.jit(doubled)\n"
          "print(f.lower(jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 8, 8))).as_text()"
          ".count('__onednn$convolution'))\n"
          "print(float(f(jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 8, 8))).sum()))\n")
  out = {}
  for setting in ("auto", "1", "0"):
    cache = tmp_path / setting
    env = dict(os.environ, RATTR_JAX_ONEDNN=setting)
    proc = subprocess.run([sys.executable, "-c", code, str(cache)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out[setting] = (proc.stdout.split(), [n for n in os.listdir(cache) if "doubled" in n])
  for setting in ("auto", "1", "0"):
    assert out[setting][0] == ["0", "160000.0"] and len(out[setting][1]) == 1, out
  # without the cache, the same lowering has the oneDNN convolution
  no_cache = code.replace("rattr_jax.enable_compilation_cache(sys.argv[1], min_compile_time_secs=0)\n", "")
  proc = subprocess.run([sys.executable, "-c", no_cache, "unused"], capture_output=True, text=True,
                        env=dict(os.environ, RATTR_JAX_ONEDNN="auto"))
  assert proc.returncode == 0 and proc.stdout.split() == ["1", "160000.0"], proc.stderr[-3000:]


def test_view_shares_weights_and_leaves_the_model_alone():
  from flax import nnx
  m = models.create_model("cnn", input_shape=(8, 8, 1), num_classes=3, seed=0, widths=(4, 8, 16))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  before = models.as_fn(m)(x)
  v = models.view(m, train=True, activation="softplus:5")
  assert type(v) is type(m)
  # Same parameter arrays, another activation: other logits; the model itself unchanged.
  pv = jax.tree_util.tree_leaves(nnx.state(v, nnx.Param))
  pm = jax.tree_util.tree_leaves(nnx.state(m, nnx.Param))
  assert all(a is b or np.array_equal(a, b) for a, b in zip(pv, pm))
  assert not np.allclose(v(x), before)
  np.testing.assert_array_equal(models.as_fn(m)(x), before)
  np.testing.assert_array_equal(models.view(m)(x), before)
