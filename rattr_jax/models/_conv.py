"""A 2-D convolution that stays on XLA:CPU's fast paths under autodiff.

Plain `lax.conv_general_dilated` differentiated inside `lax.scan`/`lax.map`
lowers its transposed convolution to a slow generic emitter on CPU (measured
3.5-4x slower, `shared/research/cpu_performance.md`). Here:

* ``impl="fast"``: a JAX primitive, bilinear in ``(x, w)``, whose transposes are
  written by hand (`_bilinear_primitive`): the input gradient is the same
  primitive with the flipped, in/out-swapped kernel, and the kernel gradient
  a canonical-layout convolution (the primitive again) that XLA:CPU keeps on
  its fast path inside loops too (see `_weight_grad`). JAX derives the JVP
  (``conv(dx, w) + conv(x, dw)``), so forward mode (``jax.jvp``,
  forward-over-reverse Hessian-vector products) and reverse mode work to any
  order, and every derivative is again one of these fast forms. Convolutions
  with at most `FEW_CHANNELS` input channels (image input layers) take
  `_few_channel_conv`, a primitive whose input gradient is the transpose of
  im2col (one GEMM, then shifted adds).
* On the CPU backend, the primitives' forward and input-gradient convolutions
  (float32, a window of at most `ONEDNN_MAX_TAPS` taps, one-device programs) are
  lowered to oneDNN's convolution, through XLA:CPU's own
  ``__onednn$convolution`` custom call (`ONEDNN`, `onednn_available`), instead of
  XLA's Eigen kernels: alone at batch 128, the MNIST CNN's conv2 forward 2.0 ->
  1.3 ms and input gradient 2.6 -> 1.4 ms, the CIFAR LeNet's conv1 forward
  1.8 -> 0.7 ms and conv4 6.6 -> 4.6 ms (`benchmarks/conv_ops.py`). The weight
  gradients (a window as large as the feature map) stay on Eigen, which ran
  them 1.1-2x faster than oneDNN's forward kernels.
* ``impl="lax"``: plain `lax.conv_general_dilated`.
* ``impl="auto"`` (default): ``fast`` on the CPU backend, ``lax`` elsewhere.

Until 2026-12-05 ``fast`` was a `jax.custom_vjp`, which has no forward mode
(``AD_RULES = "custom_vjp"`` keeps that form for benchmarks). First- and
second-order reverse-mode steps compile to the same program either way
(gradient alignment, activation sensitivity, PGD-AT: identical optimized
HLO); what changed is that forward-over-reverse is now available on the
fast path: Hessian-norm training steps 1.07-1.11x faster (MNIST CNN and
CIFAR LeNet, batch 128, `benchmarks/fused_steps.py` case ``*_ad_rules``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from rattr_jax._xla_flags import convolutions_on_eigen

CONV_IMPLS = ("auto", "fast", "lax")
_DN = ("NHWC", "HWIO", "NHWC")
#: Block size of the weight-gradient convolution's batch (its input features;
#: `_weight_grad`); ``0`` or ``None``: no batch blocks.
WEIGHT_GRAD_FEATURE_CHUNK = 16
#: Block size of its output channels: an int (``0``/``None``: no blocks) or
#: ``"auto"``: `WEIGHT_GRAD_FEATURE_CHUNK` while XLA:CPU runs convolutions on
#: YNNPACK (it sends those whose input and output feature counts are both <= 16
#: to Eigen instead, which was faster for this shape), none when ``XLA_FLAGS``
#: already sends every convolution to Eigen (`rattr_jax.EIGEN_CONV_FLAG`, set by
#: `rattr_jax.configure_cpu`), where output blocks only cost: per weight gradient
#: at batch 128 (idle, medians of 9), CIFAR LeNet conv2 44.5 -> 38.1 ms, conv3
#: 14.5 -> 9.9, conv4 26.4 -> 19.3, MNIST CNN conv2 6.2 -> 4.7. Read when traced.
WEIGHT_GRAD_OUT_CHUNK = "auto"
#: Whether ``impl="fast"`` rewrites strided convolutions as stride-1 ones
#: (`_strided_conv`); ``False`` leaves them to `lax.conv_general_dilated` (for
#: `benchmarks/fused_steps.py`'s before/after comparison).
STRIDED_AS_STRIDE_1 = True
#: Stride-1 convolutions with at most this many input channels take
#: `_few_channel_conv` under ``impl="fast"``; ``0``: none do (for benchmarks).
FEW_CHANNELS = 4
#: `_few_channel_conv`'s forward folds this many adjacent output columns into
#: the channels (`_column_block_conv`); ``0``: the forward it had before
#: (im2col for one channel, else `lax`), for `benchmarks/fused_steps.py`.
#: Alone at batch 128 (idle, medians of 15): MNIST CNN conv1 (1 -> 16 channels,
#: 5x5) 3.79 ms as im2col, 2.47 as `lax`, 1.38 with blocks of 2, 0.70 with 4,
#: 0.92 with 7 (PyTorch 0.61); CIFAR LeNet conv1 (3 -> 32, 3x3) 3.87 ms as
#: `lax`, 1.88 with blocks of 4 (PyTorch 1.94).
FEW_CHANNEL_FORWARD_BLOCK = 4
#: How ``impl="fast"`` convolutions are differentiated: ``"primitive"`` (JAX
#: primitives with a JVP and their own transposes, `_bilinear_primitive`: forward
#: and reverse mode, to any order, on the fast forms) or ``"custom_vjp"``
#: (`jax.custom_vjp`: reverse mode only; the form before, for
#: `benchmarks/fused_steps.py`). Read when traced.
AD_RULES = "primitive"
#: Vmapped over both input and kernel (several models in one program,
#: `rattr_jax.training.train_many`), up to this many mapped pairs become one fast
#: convolution each; more (or ``0``) become one grouped `lax` convolution, which
#: XLA:CPU runs on a slow path. `train_many`'s CE program against S sequential runs
#: (`benchmarks/training_cost.py --many`, batch 32, S = 2/4/8): MNIST CNN
#: 0.69/0.63/0.52x grouped, 1.10/0.98/0.91x one each; CIFAR LeNet 0.63/0.52/0.44x,
#: 0.79/0.75/0.64x (a `lax.map` over the pairs instead: CNN 0.98/0.91/0.84x, LeNet
#: 0.86/0.83/0.64x). Read when traced.
MAPPED_KERNELS_UNROLLED = 8


def _lax_conv(x, w, padding, stride=(1, 1)):
  return lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=_DN)


def _shape_of(a):
  """The shape of an operand that may be a transpose rule's undefined primal."""
  return a.aval.shape if hasattr(a, "aval") and not hasattr(a, "shape") else a.shape


#: Whether stride-1 float32 convolutions of the ``"fast"`` primitives are lowered, on
#: the CPU backend, to oneDNN's convolution (XLA:CPU's ``__onednn$convolution``
#: custom call) instead of XLA's own (Eigen) kernels: ``"auto"`` (when this
#: jaxlib has it, `onednn_available`), ``True`` or ``False``. Read when lowered.
#: Its default comes from the environment variable ``RATTR_JAX_ONEDNN`` (``0``:
#: off, ``1``: on, unset or ``auto``: auto).
ONEDNN = {"0": False, "false": False, "off": False, "1": True, "true": True, "on": True}.get(
    os.environ.get("RATTR_JAX_ONEDNN", "auto").strip().lower(), "auto")


def _onednn_config(padding) -> str:
  (plh, phh), (plw, phw) = padding
  data = {"batch_dim": 0, "feature_dim": 3, "spatial_dims": [1, 2]}
  conv = {"dims": 4, "feature_groups": 1,
          "input": {"dims": 4, "data": data},
          "kernel": {"dims": 4, "filter": {"input_feature_dim": 2, "output_feature_dim": 3,
                                           "spatial_dims": [0, 1]}},
          "output": {"dims": 4, "data": data},
          "window": {"pad_left": [plh, plw], "pad_right": [phh, phw], "strides": [1, 1],
                     "window_dilations": [1, 1]}}
  return json.dumps({"onednn_conv_config": conv}, separators=(",", ":"))


def _onednn_lowering(ctx, x, w, *, padding):
  return jax.ffi.ffi_lowering("__onednn$convolution", backend_config=_onednn_config(padding),
                              api_version=1)(ctx, x, w)


def _onednn_or(forward):
  fallback = mlir.lower_fun(forward, multiple_results=False)

  def lower(ctx, x, w, **params):
    xa, wa = ctx.avals_in
    (ya,) = ctx.avals_out
    if _onednn_suits(xa, wa, ya) and _one_device(ctx) and onednn_in_use():
      return _onednn_lowering(ctx, x, w, padding=params["padding"])
    return fallback(ctx, x, w, **params)

  return lower


#: oneDNN takes a convolution whose kernel has at most this many taps (KH x KW).
ONEDNN_MAX_TAPS = 49


def _onednn_suits(xa, wa, ya) -> bool:
  """float32, a window of at most `ONEDNN_MAX_TAPS` taps and no larger than the output.

  That is every forward and input-gradient convolution of a conv net; the weight
  gradients (`_weight_grad`: a window as large as the feature map) stay on XLA's
  Eigen kernels, which ran them 1.1-2x faster than oneDNN's forward kernels
  (batch 128, the MNIST CNN and CIFAR LeNet layers).
  """
  kh, kw = wa.shape[0], wa.shape[1]
  return (xa.dtype == np.float32 and wa.dtype == np.float32 and kh * kw <= ONEDNN_MAX_TAPS
          and ya.shape[1] >= kh and ya.shape[2] >= kw)


def _one_device(ctx) -> bool:
  """Whether the program being lowered runs on one device.

  XLA's SPMD partitioner has no rule for the custom call: in a program partitioned
  over several devices (a ``"data"`` mesh: `rattr_jax.distributed`, data-parallel
  training) it would gather the whole batch onto every device. There, convolutions
  stay XLA's own, which it partitions.
  """
  return getattr(ctx.module_context.axis_context, "num_devices", None) == 1


def persistent_cache_enabled() -> bool:
  """Whether JAX's persistent compilation cache is on (a directory set and the cache enabled).

  While it is, convolutions are lowered with XLA's own kernels whatever `ONEDNN` says:
  jaxlib 0.10.2's XLA:CPU cannot serialize a program with the oneDNN custom call, and
  JAX tries to whenever it compiles one. The attempt fails with ``std::bad_alloc``, and
  it crashed the process once (a segmentation fault in the serializer, in a test
  worker that had the cache on).
  """
  return bool(jax.config.jax_compilation_cache_dir) and bool(
      jax.config.jax_enable_compilation_cache)


def onednn_in_use() -> bool:
  """Whether the CPU lowering of a convolution would use oneDNN now: `ONEDNN` resolved,
  and off while the persistent compilation cache is on (`persistent_cache_enabled`)."""
  if persistent_cache_enabled():
    return False
  if ONEDNN == "auto":
    return onednn_available()
  return bool(ONEDNN)


@contextlib.contextmanager
def onednn_convolutions(setting):
  """Within the block, convolutions are lowered with oneDNN (``True``), XLA's own (``False``)
  or by `ONEDNN`'s default rule (``"auto"``: where this jaxlib has it); restored after.

  The setting is read when a program is *lowered* (its first call with new shapes):
  a function JAX has already lowered for these shapes keeps the convolutions it was
  lowered with (JAX caches lowerings by function, also across new `jax.jit`
  wrappers). It decides two things: speed (oneDNN's forward and input-gradient
  convolutions are 1.4-2.6x XLA's Eigen kernels alone at batch 128, module docstring) and
  whether a program can be stored in JAX's persistent compilation cache: jaxlib
  0.10.2 cannot serialize the oneDNN custom call, so while that cache is on
  (`persistent_cache_enabled`, `rattr_jax.enable_compilation_cache`) convolutions are
  XLA's whatever the setting. Values differ between the two at float32 rounding.
  Not thread-safe: it sets the module-wide `ONEDNN`. A study sets it from
  ``[compute] onednn``.

  Args:
    setting: ``True``, ``False`` or ``"auto"``.
  """
  global ONEDNN
  if not (setting is True or setting is False or setting == "auto"):
    raise ValueError(f"`setting` must be True, False or 'auto'; got {setting!r}.")
  before = ONEDNN
  ONEDNN = setting
  try:
    yield
  finally:
    ONEDNN = before


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
  """Whether this jaxlib's XLA:CPU runs oneDNN convolutions (x86-64 builds do).

  Compiles and runs one small convolution through the custom call and compares it
  with `lax`'s; any failure (no such target, wrong result) means no.
  """
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError:
    return False
  def probe_type(x, w, *, padding):  # the `lax` convolution's output type
    out = jax.eval_shape(functools.partial(_lax_conv, padding=padding), x, w)
    return ShapedArray(out.shape, out.dtype)

  probe = Primitive("rattr_onednn_probe")
  probe.def_abstract_eval(probe_type)
  mlir.register_lowering(probe, _onednn_lowering, platform="cpu")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  w = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
  pad = ((1, 0), (0, 1))
  try:
    with jax.default_device(cpu):
      got = np.asarray(jax.jit(lambda a, b: probe.bind(a, b, padding=pad))(x, w))
      want = np.asarray(jax.jit(lambda a, b: _lax_conv(a, b, pad))(x, w))
  except Exception:  # noqa: BLE001 - any failure: not available
    return False
  return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-4))


def _bilinear_primitive(name, forward, transpose_x, transpose_w, static_names,
                        cpu_lowering=None):
  """``apply(x, w, **params)``: a primitive bilinear in ``(x, w)`` with its own transposes.

  ``forward(x, w, **params)`` gives its value (and lowering; ``static_names``
  names its keyword parameters, hashable settings); ``transpose_x(ct, w, x_shape,
  **params)`` and ``transpose_w(ct, x, w_shape, **params)`` its transposes. JAX
  derives the rest: ``jvp = p(dx, w) + p(x, dw)`` (forward mode, e.g.
  forward-over-reverse Hessian-vector products), reverse mode by transposing
  that, to any order, as long as the transposes are written with differentiable
  operations (the primitives here, `jnp`). Vmapped over ``x`` alone, the mapped
  axis is folded into the batch; over ``x`` and ``w``, up to
  `MAPPED_KERNELS_UNROLLED` pairs are one primitive each; otherwise it is the
  `lax` computation under `jax.vmap` (a grouped convolution).

  ``cpu_lowering(forward)``, if given, is its lowering rule on the CPU backend
  (`_onednn_or`: oneDNN where it suits, else ``forward``'s).

  With ``AD_RULES="custom_vjp"`` (read when traced) ``apply`` is instead a
  `jax.custom_vjp` of ``forward`` whose backward pass is the same two transposes
  (reverse mode only; the form before, for benchmarks).
  """
  p = Primitive(name)

  @functools.lru_cache(maxsize=4096)
  def out_type(x_shape, x_dtype, w_shape, w_dtype, params):
    out = jax.eval_shape(functools.partial(forward, **dict(params)),
                         jax.ShapeDtypeStruct(x_shape, x_dtype),
                         jax.ShapeDtypeStruct(w_shape, w_dtype))
    return out.shape, out.dtype

  def abstract(x, w, **params):
    shape, dtype = out_type(x.shape, x.dtype, w.shape, w.dtype, tuple(sorted(params.items())))
    return ShapedArray(shape, dtype)

  # Eager calls: one compiled program of the primitive itself (so with its CPU lowering).
  p.def_impl(jax.jit(lambda x, w, **params: p.bind(x, w, **params), static_argnames=static_names))
  p.def_abstract_eval(abstract)
  mlir.register_lowering(p, mlir.lower_fun(forward, multiple_results=False))
  if cpu_lowering is not None:
    mlir.register_lowering(p, cpu_lowering(forward), platform="cpu")
  ad.defbilinear(
      p,
      lambda ct, x, w, **params: transpose_x(ct, w, _shape_of(x), **params),
      lambda ct, x, w, **params: transpose_w(ct, x, _shape_of(w), **params))

  def batch(args, dims, **params):
    (x, w), (bx, bw) = args, dims
    if bw is None:
      x = jnp.moveaxis(x, bx, 0)
      v, b = x.shape[:2]
      y = p.bind(x.reshape(v * b, *x.shape[2:]), w, **params)
      return y.reshape(v, b, *y.shape[1:]), 0
    count = w.shape[bw]
    if count <= MAPPED_KERNELS_UNROLLED and bx is not None:
      ws, xs = jnp.moveaxis(w, bw, 0), jnp.moveaxis(x, bx, 0)
      return jnp.stack([p.bind(xs[i], ws[i], **params) for i in range(count)]), 0
    return jax.vmap(functools.partial(forward, **params), in_axes=(bx, bw))(x, w), 0

  batching.primitive_batchers[p] = batch

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
  def vjp_form(x, w, params):
    return forward(x, w, **dict(params))

  def vjp_bwd(params, res, g):
    (x, w), kw = res, dict(params)
    return transpose_x(g, w, x.shape, **kw), transpose_w(g, x, w.shape, **kw)

  vjp_form.defvjp(lambda x, w, params: (vjp_form(x, w, params), (x, w)), vjp_bwd)

  def apply(x, w, *, padding, **params):
    params["padding"] = tuple(tuple(int(v) for v in pair) for pair in padding)
    if AD_RULES == "custom_vjp":
      return vjp_form(x, w, tuple(sorted(params.items())))
    return p.bind(x, w, **params)

  return apply


def _conv_transpose_x(g, w, x_shape, *, padding):
  """``dL/dx`` of the stride-1 ``y = conv(x, w)``: the convolution of ``g`` with the flipped,
  in/out-swapped kernel, itself `_fast_conv` (so its own derivatives stay fast)."""
  kh, kw = w.shape[0], w.shape[1]
  (plh, phh), (plw, phw) = padding
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx = _fast_conv(g, w_t, ((kh - 1 - plh, kh - 1 - phh), (kw - 1 - plw, kw - 1 - phw)))
  return dx.astype(w.dtype)


def _conv_transpose_w(g, x, w_shape, *, padding):
  return _weight_grad(x, g, tuple(w_shape[:2]), padding).astype(x.dtype)


def _fast_conv(x, w, padding):
  """Stride-1 NHWC/HWIO convolution with explicit non-negative ``padding``, whose
  input and weight gradients (its transposes) stay on XLA:CPU's fast paths, in loops
  too. A primitive (`_bilinear_primitive`): forward and reverse mode to any order."""
  return _CONV(x, w, padding=padding)


def _weight_grad(x, g, kernel_size, padding, *, blocked=True):
  """``dL/dw`` of the stride-1 convolution ``y = conv(x, w)`` given ``g = dL/dy``.

  ``dw[p, q, c, o] = sum_{b,h,w} xpad[b, h + p, w + q, c] g[b, h, w, o]``.
  Autodiff's own weight-gradient is a convolution in a non-canonical layout
  (``f01b_i01o->01bf``). Outside loops XLA:CPU transposes it to a canonical
  one; inside a `lax.scan`/`while_loop` body it does not, and the generic
  emitter it falls back to was 20-100x slower (e.g. the CIFAR LeNet's
  conv2 weight-gradient in a 4-step scan at batch 32: 1073 ms against 8 ms
  per step). So it is written here as the same contraction as a *canonical*
  NHWC/HWIO convolution (``Cin`` as the batch, ``B`` as the input feature,
  ``g`` as the kernel), which XLA:CPU runs on its fast convolution path, in
  loops too. For few input channels (an image's input layer, unblocked) this
  was also faster than im2col + one GEMM (MNIST CNN conv1 at batch 128: 1.8
  against 6.0 ms; CIFAR LeNet conv1: 5.0 against 8.0 ms).
  """
  cout = g.shape[-1]
  xt = x.transpose(3, 1, 2, 0)      # [Cin, H, W, B]
  gt = g.transpose(1, 2, 0, 3)      # [Ho, Wo, B, Cout]: an HWIO kernel
  bsz = x.shape[0]
  cb = (WEIGHT_GRAD_FEATURE_CHUNK or bsz) if blocked else bsz
  co = (_weight_grad_out_chunk() or cout) if blocked else cout
  # In the primitive's transpose: the primitive again, so that derivatives of any
  # order stay on these forms (with AD_RULES="custom_vjp", `lax`'s as before).
  conv = _fast_conv if AD_RULES == "primitive" else _lax_conv
  if bsz <= cb and cout <= co:
    r = conv(xt, gt, padding)
  else:
    # Blocks of <= cb batch elements (the convolution's input features) and
    # <= co output channels. On YNNPACK this large-window shape ran 1.3-1.8x
    # slower than as blocks of <= 16 x 16, which XLA:CPU leaves to Eigen
    # (CIFAR LeNet, batch 128); on Eigen, batch blocks alone are fastest.
    xp = jnp.pad(xt, ((0, 0),) + tuple(padding) + ((0, 0),))
    nopad = ((0, 0), (0, 0))
    cols = []
    for o in range(0, cout, co):
      acc = None
      for b in range(0, bsz, cb):
        part = conv(xp[..., b:b + cb], gt[:, :, b:b + cb, o:o + co], nopad)
        acc = part if acc is None else acc + part
      cols.append(acc)
    r = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  return r.transpose(1, 2, 0, 3)    # [Cin, KH, KW, Cout] -> [KH, KW, Cin, Cout]


_CONV = _bilinear_primitive(
    "rattr_conv2d", lambda x, w, *, padding: _lax_conv(x, w, padding),
    _conv_transpose_x, _conv_transpose_w, ("padding",), cpu_lowering=_onednn_or)


def _weight_grad_out_chunk() -> int:
  if WEIGHT_GRAD_OUT_CHUNK == "auto":
    return 0 if convolutions_on_eigen() else (WEIGHT_GRAD_FEATURE_CHUNK or 0)
  return WEIGHT_GRAD_OUT_CHUNK or 0


def _col2im_input_grad(g, w, padding, in_hw):
  """``dL/dx`` of ``y = conv(x, w)`` (stride 1): one GEMM to patch gradients, then shifted adds.

  The patch gradients ``g @ w.reshape(KH*KW*Cin, Cout).T`` (``[B, Ho, Wo, KH*KW*Cin]``)
  are padded into place per offset and summed: the transpose of im2col. For an
  output of few channels this beat the transposed convolution alone (CIFAR
  LeNet conv1 at batch 128: 3.1 against 11.8 ms), though not measurably in
  whole LeNet steps. Plain differentiable ops, so second derivatives (attacks,
  gradient regularizers) need no special rule.
  """
  kh, kw, cin, cout = w.shape
  (plh, _), (plw, _) = padding
  b, ho, wo, _ = g.shape
  dp = (g @ w.reshape(kh * kw * cin, cout).T).reshape(b, ho, wo, kh * kw, cin)
  # `jnp.split`, not K*K slices: its transpose is one concatenate, where the
  # transpose of each slice would be a full-size padded array (K^4 work).
  parts = jnp.split(dp, kh * kw, axis=3)
  dxp = None
  for i, part in enumerate(parts):
    p, q = divmod(i, kw)
    term = jnp.pad(part[:, :, :, 0], ((0, 0), (p, kh - 1 - p), (q, kw - 1 - q), (0, 0)))
    dxp = term if dxp is None else dxp + term
  return dxp[:, plh:plh + in_hw[0], plw:plw + in_hw[1]]


def _few_channel_forward(x, w, *, padding, block):
  if block:
    return _column_block_conv(x, w, padding, block)
  return _im2col_conv(x, w, padding) if x.shape[-1] == 1 else _lax_conv(x, w, padding)


def _few_channel_transpose_x(g, w, x_shape, *, padding, block):
  return _col2im_input_grad(g, w, padding, tuple(x_shape[1:3])).astype(w.dtype)


def _few_channel_transpose_w(g, x, w_shape, *, padding, block):
  # The weight gradient in column blocks too was 1.42 -> 0.62 ms alone (MNIST CNN
  # conv1, batch 128, blocks of 2) but whole steps 0.94-1.03x: not kept.
  return _weight_grad(x, g, tuple(w_shape[:2]), padding, blocked=False).astype(x.dtype)


_FEW_CHANNEL = _bilinear_primitive("rattr_few_channel_conv2d", _few_channel_forward,
                                   _few_channel_transpose_x, _few_channel_transpose_w,
                                   ("padding", "block"), cpu_lowering=_onednn_or)


def _few_channel_conv(x, w, padding):
  """A stride-1 convolution of an input with few channels (`FEW_CHANNELS`), padding >= 0.

  ``impl="fast"`` for the image input layers. Whole training steps, paired
  (`benchmarks/fused_steps.py`): MNIST CNN gradient alignment 1.4x single and
  1.5x fused, CE 1.05-1.17x; CIFAR LeNet within noise.

  Forward: `_column_block_conv` (`FEW_CHANNEL_FORWARD_BLOCK` output columns as
  channels: one convolution with 4x the channels, which XLA:CPU's Eigen
  kernels run 2-5x faster than the few-channel one); input gradient:
  `_col2im_input_grad`; kernel gradient: `_weight_grad` (a canonical
  convolution, unblocked). A primitive (`_bilinear_primitive`).
  """
  return _FEW_CHANNEL(x, w, padding=padding, block=int(FEW_CHANNEL_FORWARD_BLOCK or 0))


def _column_blocks(x, padding, kernel_size, r):
  """The padded input with ``r`` adjacent columns folded into the channels.

  ``[B, H, W, C]`` -> ``[B, Ho + KH - 1, nb - 1 + kb, r*C]`` with ``nb = ceil(Wo / r)``
  output column blocks and ``kb = ceil((r + KW - 1) / r)`` kernel column blocks:
  output columns ``r*J .. r*J + r - 1`` read input blocks ``J .. J + kb - 1``.
  The right edge is zero-padded (or cropped) to whole blocks.
  """
  kh, kw = kernel_size
  (plh, phh), (plw, phw) = padding
  b, h, wd, c = x.shape
  wo = wd + plw + phw - kw + 1
  nb, kb = -(-wo // r), -(-(r + kw - 1) // r)
  win = (nb - 1 + kb) * r
  xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, max(win - wd - plw, 0)), (0, 0)))[:, :, :win]
  return xp.reshape(b, h + plh + phh, nb - 1 + kb, r * c), nb, kb, wo


def _column_block_selector(kw, r):
  """``S[q, s, m, t] = 1`` where input column ``r*s + m`` of a block feeds output column ``t`` at kernel column ``q``."""
  kb = -(-(r + kw - 1) // r)
  q = (np.arange(kb)[:, None, None] * r + np.arange(r)[None, :, None]
       - np.arange(r)[None, None, :])                      # [kb, m, t]
  return (q[None] == np.arange(kw)[:, None, None, None]).astype(np.float32)  # [kw, kb, m, t]


def _column_block_kernel(w, r):
  """``[KH, KW, C, O]`` -> ``[KH, kb, r*C, r*O]``: the kernel of the column-blocked convolution."""
  kh, kw, c, o = w.shape
  sel = jnp.asarray(_column_block_selector(kw, r), w.dtype)
  wb = jnp.einsum("pqco,qsmt->psmcto", w, sel, precision=lax.Precision.HIGHEST)
  return wb.reshape(kh, sel.shape[1], r * c, r * o)


def _column_block_conv(x, w, padding, r):
  """Stride-1 ``conv(x, w)`` (padding >= 0) with ``r`` output columns folded into the channels.

  One `lax` convolution of the column-blocked input (`_column_blocks`) with a
  ``[KH, kb, r*Cin, r*Cout]`` kernel that is zero where a block's input column
  is outside an output column's window; exact (the same products, plus zeros).
  It costs ``kb*r / KW`` times the multiply-adds (1.6x for 5x5 with ``r = 4``)
  but gives the few-channel input layers a GEMM-shaped convolution.
  """
  kh, kw, _, cout = w.shape
  r = max(1, min(r, x.shape[2] + sum(padding[1]) - kw + 1))
  xs, nb, _, wo = _column_blocks(x, padding, (kh, kw), r)
  y = _lax_conv(xs, _column_block_kernel(w, r), ((0, 0), (0, 0)))
  b, ho = y.shape[:2]
  return y.reshape(b, ho, nb * r, cout)[:, :, :wo]


def _im2col_conv(x, w, padding):
  kh, kw, cin, cout = w.shape
  (plh, phh), (plw, phw) = padding
  xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
  ho = xp.shape[1] - kh + 1
  wo = xp.shape[2] - kw + 1
  cols = [xp[:, p:p + ho, q:q + wo, :] for p in range(kh) for q in range(kw)]
  patches = jnp.concatenate(cols, axis=-1)  # [B, Ho, Wo, K*K*Cin], (p, q, c) order
  return patches @ w.reshape(kh * kw * cin, cout)


def _strided_padding(padding, spatial, kernel_size, stride):
  """Explicit pairs of a strided convolution (``"SAME"`` as XLA pads it: ``ceil(n / s)`` outputs)."""
  if isinstance(padding, str) and padding.upper() == "SAME":
    out = []
    for n, k, st in zip(spatial, kernel_size, stride):
      total = max((-(-n // st) - 1) * st + k - n, 0)
      out.append((total // 2, total - total // 2))
    return tuple(out)
  return explicit_padding(padding, kernel_size)


def _strided_conv(x, w, stride, padding):
  """A strided convolution as a stride-1 one, so that it takes the fast path (`_fast_conv`).

  Plain `lax.conv_general_dilated` with strides, differentiated inside a `lax.scan`,
  falls back to XLA:CPU's generic emitter: a CIFAR ResNet-18's fused training steps
  were 3.2x slower than single ones. Here a ``1x1`` kernel without padding reads
  every ``s``-th pixel and is a stride-1 ``1x1`` convolution of that subsample; any
  other kernel is rewritten by space-to-depth: the padded input ``[B, s Ho', s Wo', C]``
  becomes ``[B, Ho', Wo', s*s*C]`` and the kernel, zero-padded to a multiple of ``s``,
  ``[ceil(K/s), ceil(K/s), s*s*C, O]``. Both are exact (the same sums, in another
  order). The rewrite costs ``(s ceil(K/s) / K)^2`` times the multiply-adds (1.78x for
  a 3x3 kernel with stride 2).
  """
  kh, kw, cin, cout = w.shape
  (plh, phh), (plw, phw) = padding
  sh, sw = stride
  ho = (x.shape[1] + plh + phh - kh) // sh + 1
  wo = (x.shape[2] + plw + phw - kw) // sw + 1
  if (kh, kw) == (1, 1) and padding == ((0, 0), (0, 0)):
    sub = x[:, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw]
    return conv2d(sub, w, padding="VALID", impl="fast")
  kh2, kw2 = -(-kh // sh), -(-kw // sw)
  # rows [0, sh * (ho - 1 + kh2)) of the padded input: pad (or crop) the high side to that
  lh, lw = sh * (ho - 1 + kh2), sw * (wo - 1 + kw2)
  xp = jnp.pad(x, ((0, 0), (plh, max(lh - x.shape[1] - plh, 0)),
                   (plw, max(lw - x.shape[2] - plw, 0)), (0, 0)))[:, :lh, :lw]
  b = x.shape[0]
  xs = xp.reshape(b, lh // sh, sh, lw // sw, sw, cin).transpose(0, 1, 3, 2, 4, 5)
  xs = xs.reshape(b, lh // sh, lw // sw, sh * sw * cin)
  wp = jnp.pad(w, ((0, sh * kh2 - kh), (0, sw * kw2 - kw), (0, 0), (0, 0)))
  ws = wp.reshape(kh2, sh, kw2, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  ws = ws.reshape(kh2, kw2, sh * sw * cin, cout)
  return conv2d(xs, ws, padding="VALID", impl="fast")


def explicit_padding(padding, kernel_size):
  """``"SAME"``/``"VALID"`` (stride 1) or explicit pairs -> explicit pairs."""
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return ((0, 0), (0, 0))
    if padding.upper() == "SAME":
      out = []
      for k in kernel_size:
        total = k - 1
        out.append((total // 2, total - total // 2))
      return tuple(out)
    raise ValueError(f"Unknown `padding` {padding!r}; expected 'SAME', 'VALID' or pairs.")
  return tuple((int(a), int(b)) for a, b in padding)


def resolve_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown `conv_impl` {impl!r}; expected one of {list(CONV_IMPLS)}.")
  if impl == "auto":
    return "fast" if jax.default_backend() == "cpu" else "lax"
  return impl


def conv2d(x: jax.Array, w: jax.Array, *, stride=(1, 1), padding="SAME",
           impl: str = "auto") -> jax.Array:
  """NHWC x HWIO convolution with a selectable autodiff implementation.

  Args:
    x: ``[B, H, W, Cin]``.
    w: ``[KH, KW, Cin, Cout]``.
    stride: spatial strides; with ``impl="fast"`` a strided convolution is
      rewritten as a stride-1 one (`_strided_conv`), so it stays fast under
      autodiff inside loops.
    padding: ``"SAME"``, ``"VALID"`` or explicit ``((lo, hi), (lo, hi))``.
    impl: ``"auto"``, ``"fast"`` or ``"lax"`` (see module docstring).

  Returns:
    ``[B, H', W', Cout]``.
  """
  impl = resolve_impl(impl)
  stride = tuple(int(s) for s in stride)
  if stride != (1, 1):
    if impl == "lax" or not STRIDED_AS_STRIDE_1:
      pad = padding if isinstance(padding, str) else explicit_padding(padding, w.shape[:2])
      return _lax_conv(x, w, pad, stride)
    return _strided_conv(x, w, stride, _strided_padding(padding, x.shape[1:3], w.shape[:2],
                                                        stride))
  pad = explicit_padding(padding, w.shape[:2])
  if impl == "lax" or min(min(p) for p in pad) < 0:  # a negative pad (a crop): lax only
    return _lax_conv(x, w, pad)
  if w.shape[2] <= FEW_CHANNELS:
    return _few_channel_conv(x, w, pad)
  if w.shape[2] == 1:
    return _im2col_conv(x, w, pad)
  return _fast_conv(x, w, pad)
