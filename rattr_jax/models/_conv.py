"""A 2-D convolution that stays on XLA:CPU's fast paths under autodiff.

Plain `lax.conv_general_dilated` differentiated inside `lax.scan`/`lax.map`
lowers its transposed convolution to a slow generic emitter on CPU (measured
3.5-4x slower, `shared/research/cpu_performance.md`). Here:

* ``impl="fast"``: a `jax.custom_vjp` convolution whose input-gradient is the
  same custom convolution with the flipped, in/out-swapped kernel (so second
  derivatives stay fast) and whose kernel-gradient is a canonical-layout
  convolution (or im2col + one GEMM for few input channels) that XLA:CPU
  keeps on its fast path inside loops too (see `_weight_grad`). One-input-channel convolutions use an explicit im2col (slices + one
  dot), which is differentiable to any order and forward-mode friendly.
* ``impl="lax"``: plain `lax.conv_general_dilated` (supports forward-mode AD,
  e.g. `jax.jvp` of `jax.grad` for Hessian-vector products).
* ``impl="auto"`` (default): ``fast`` on the CPU backend, ``lax`` elsewhere.

Note: a `custom_vjp` function has no forward-mode derivative. Code that needs
``jax.jvp`` through a model (forward-over-reverse HVPs) should build the model
function with ``conv_impl="lax"`` (see `rattr_jax.models.as_fn`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "fast", "lax")
_DN = ("NHWC", "HWIO", "NHWC")
#: Block size of the weight-gradient convolution's batch and output channels
#: (`_weight_grad`); ``0`` or ``None``: one convolution. XLA:CPU sends
#: convolutions whose input and output feature counts are both <= 16 to its
#: Eigen path rather than the YNNPACK fusion.
WEIGHT_GRAD_FEATURE_CHUNK = 16


def _lax_conv(x, w, padding, stride=(1, 1)):
  return lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fast_conv(x, w, padding):
  return _lax_conv(x, w, padding)


def _fast_conv_fwd(x, w, padding):
  return _fast_conv(x, w, padding), (x, w)


def _fast_conv_bwd(padding, res, g):
  x, w = res
  kh, kw = w.shape[0], w.shape[1]
  (plh, phh), (plw, phw) = padding
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx = _fast_conv(g, w_t, ((kh - 1 - plh, kh - 1 - phh), (kw - 1 - plw, kw - 1 - phw)))
  dw = _weight_grad(x, g, (kh, kw), padding)
  return dx, dw.astype(w.dtype)


def _weight_grad(x, g, kernel_size, padding):
  """``dL/dw`` of the stride-1 convolution ``y = conv(x, w)`` given ``g = dL/dy``.

  ``dw[p, q, c, o] = sum_{b,h,w} xpad[b, h + p, w + q, c] g[b, h, w, o]``.
  Autodiff's own weight-gradient is a convolution in a non-canonical layout
  (``f01b_i01o->01bf``). Outside loops XLA:CPU transposes it to a canonical
  one; inside a `lax.scan`/`while_loop` body it does not, and the generic
  emitter it falls back to was 20-100x slower (e.g. the CIFAR LeNet's
  conv2 weight-gradient in a 4-step scan at batch 32: 1073 ms against 8 ms
  per step). So it is written here in forms that stay fast everywhere:

  * ``Cin >= 8``: the same contraction as a *canonical* NHWC/HWIO
    convolution (``Cin`` as the batch, ``B`` as the input feature, ``g`` as
    the kernel), which XLA:CPU runs on its fast convolution path, in loops
    too;
  * ``Cin < 8`` (e.g. RGB input layers): im2col + one GEMM (``K*K*Cin`` is
    small, so the patch matrix is cheap).
  """
  kh, kw = kernel_size
  (plh, phh), (plw, phw) = padding
  ho, wo = g.shape[1], g.shape[2]
  cin, cout = x.shape[-1], g.shape[-1]
  if cin >= 8:
    xt = x.transpose(3, 1, 2, 0)      # [Cin, H, W, B]
    gt = g.transpose(1, 2, 0, 3)      # [Ho, Wo, B, Cout]: an HWIO kernel
    c = WEIGHT_GRAD_FEATURE_CHUNK
    bsz = x.shape[0]
    if not c or (bsz <= c and cout <= c):
      r = lax.conv_general_dilated(xt, gt, (1, 1), padding, dimension_numbers=_DN)
    else:
      # Blocks of <= c batch elements (the convolution's input features) and
      # <= c output channels: XLA:CPU leaves such small convolutions to its
      # Eigen path instead of the YNNPACK fusion, which ran this
      # large-window shape 1.3-1.8x slower (CIFAR LeNet, batch 128).
      xp = jnp.pad(xt, ((0, 0),) + tuple(padding) + ((0, 0),))
      nopad = ((0, 0), (0, 0))
      cols = []
      for o in range(0, cout, c):
        acc = None
        for b in range(0, bsz, c):
          part = lax.conv_general_dilated(xp[..., b:b + c], gt[:, :, b:b + c, o:o + c], (1, 1),
                                          nopad, dimension_numbers=_DN)
          acc = part if acc is None else acc + part
        cols.append(acc)
      r = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return r.transpose(1, 2, 0, 3)    # [Cin, KH, KW, Cout] -> [KH, KW, Cin, Cout]
  xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
  patches = jnp.concatenate([xp[:, p:p + ho, q:q + wo] for p in range(kh) for q in range(kw)], -1)
  return (patches.reshape(-1, kh * kw * cin).T @ g.reshape(-1, cout)).reshape(kh, kw, cin, cout)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def _im2col_conv(x, w, padding):
  kh, kw, cin, cout = w.shape
  (plh, phh), (plw, phw) = padding
  xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
  ho = xp.shape[1] - kh + 1
  wo = xp.shape[2] - kw + 1
  cols = [xp[:, p:p + ho, q:q + wo, :] for p in range(kh) for q in range(kw)]
  patches = jnp.concatenate(cols, axis=-1)  # [B, Ho, Wo, K*K*Cin], (p, q, c) order
  return patches @ w.reshape(kh * kw * cin, cout)


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
    stride: spatial strides; the fast path is used for stride 1 only.
    padding: ``"SAME"``, ``"VALID"`` or explicit ``((lo, hi), (lo, hi))``.
    impl: ``"auto"``, ``"fast"`` or ``"lax"`` (see module docstring).

  Returns:
    ``[B, H', W', Cout]``.
  """
  impl = resolve_impl(impl)
  stride = tuple(stride)
  if stride != (1, 1):
    pad = padding if isinstance(padding, str) else explicit_padding(padding, w.shape[:2])
    return _lax_conv(x, w, pad, stride)
  pad = explicit_padding(padding, w.shape[:2])
  if impl == "lax":
    return _lax_conv(x, w, pad)
  if w.shape[2] == 1:
    return _im2col_conv(x, w, pad)
  return _fast_conv(x, w, pad)
