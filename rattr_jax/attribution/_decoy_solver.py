"""DANCE decoy generation: all patch x sign problems solved at once with `vmap`.

For an image ``x`` ``[H, W, C]``, a binary patch mask ``M`` (a ``K x K`` patch
over all channels) and a sign ``s in {+1, -1}``, a decoy solves (Lu et al.,
2021, Eq. 2)::

  maximise_d   ||(s d)^+||_1
  subject to   ||F(x + d) - F(x)||_inf <= epsilon        (layer-l invariance)
               d (1 - M) = 0                              (changes only in the patch)
               lo <= x + d <= hi                          (valid range)
               |d_i| <= max_change_i                      (C2 delta_i, if given)

The three box constraints are enforced exactly by projection (clipping ``d``
to ``[lower, upper]`` after every step). The layer constraint is relaxed with
an exact (hinge) penalty::

  L(d; lam) = -||(s d)^+||_1 + lam * sum_j max(0, |F_j(x + d) - F_j(x)| - epsilon)

minimised by projected Adam (`optax.scale_by_adam`) with a linearly decaying
step size. The multiplier ``lam`` starts at ``init_multiplier`` and is
multiplied by ``growth`` after every step whose iterate violates the layer
constraint (a C&W-style penalty schedule; an l1 penalty is exact once ``lam``
exceeds the constraint's Lagrange multiplier, so no ``lam -> inf`` limit is
needed). The solver keeps the *best feasible iterate* seen, starting from
``d = 0`` (the input itself, always feasible); after the last step it also
tries the last iterate shrunk by ``alpha in {1, .98, .95, .9, .8, .6, .4}``
(projected iterates oscillate around the constraint boundary, so the last one
is often barely infeasible). Finally it re-evaluates the constraint on the
returned decoy. Nothing infeasible is returned silently:

* ``fell_back``: the last iterate violated the constraint, so a shrunk copy of
  it or an earlier feasible iterate (possibly ``x`` itself) was returned;
* ``feasible``: the re-evaluated constraint holds for the returned decoy;
  `rattr_jax.attribution.decoy_saliency` drops decoys where it does not.

The ``2n`` problems of every image in a batch are flattened into one problem
axis and solved by one vmapped solver (`jax.lax.map` with ``chunk_size``
problems per chunk bounds memory). The optimisation loop is a `lax.scan` of
``num_steps`` steps inside the compiled function.

References:
  Lu, Guo, Xing, Noble, "Improving Interpretability of Deep Neural Networks
  with Decoy-Enhanced Saliency Maps" (DANCE), ICML 2021.
  https://arxiv.org/abs/2002.00526
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables

SIGNS = (1.0, -1.0)
_MAX_MULTIPLIER = 1e8
_BACKTRACK = (1.0, 0.98, 0.95, 0.9, 0.8, 0.6, 0.4)


@struct.dataclass
class DecoyResult:
  """Decoys of a batch and per-decoy solver diagnostics.

  Decoy ``j`` of an image uses patch ``j // 2`` (top-left corner
  ``offsets[j // 2]``) and sign ``SIGNS[j % 2]`` (``+1`` first).

  Attributes:
    decoys: ``[B, 2n, H, W, C]`` decoy images (the returned, best feasible
      iterate of each problem).
    feasible: ``[B, 2n]`` bool, the re-evaluated layer constraint
      ``layer_change <= epsilon`` holds for the returned decoy.
    fell_back: ``[B, 2n]`` bool, the final solver iterate was infeasible and a
      shrunk copy of it or an earlier feasible iterate (possibly ``x``) was
      returned.
    moved: ``[B, 2n]`` bool, the decoy differs from ``x`` (``objective > 0``).
    layer_change: ``[B, 2n]`` ``||F(decoy) - F(x)||_inf``.
    objective: ``[B, 2n]`` the maximised ``||(s (decoy - x))^+||_1``.
    multiplier: ``[B, 2n]`` the penalty multiplier at the end of the solve.
    offsets: ``[n, 2]`` int top-left ``(row, col)`` corner of each patch.
  """

  decoys: jax.Array
  feasible: jax.Array
  fell_back: jax.Array
  moved: jax.Array
  layer_change: jax.Array
  objective: jax.Array
  multiplier: jax.Array
  offsets: jax.Array


def patch_offsets(height: int, width: int, patch_size: int, stride: int) -> np.ndarray:
  """Top-left corners ``[n, 2]`` of ``patch_size`` patches slid by ``stride``.

  Corners run ``0, stride, 2 stride, ...`` along each axis; when the last patch
  does not reach the border, one more patch flush with the border is added,
  so every pixel is covered by at least one patch.
  """
  def axis(n):
    pos = list(range(0, n - patch_size + 1, stride))
    if pos[-1] != n - patch_size:
      pos.append(n - patch_size)
    return pos
  rows, cols = axis(height), axis(width)
  return np.array([(r, c) for r in rows for c in cols], dtype=np.int32)


def patch_mask(offset: jax.Array, shape: tuple[int, ...], patch_size: int,
               dtype) -> jax.Array:
  """Mask ``[H, W, C]`` with ones on the ``patch_size`` square at ``offset``."""
  h, w = shape[0], shape[1]
  rows = jnp.arange(h)
  cols = jnp.arange(w)
  in_r = (rows >= offset[0]) & (rows < offset[0] + patch_size)
  in_c = (cols >= offset[1]) & (cols < offset[1] + patch_size)
  m = (in_r[:, None] & in_c[None, :]).astype(dtype)
  return jnp.broadcast_to(m[:, :, None], shape)


class _Hyper(struct.PyTreeNode):
  """Continuous solver settings (traced, so sweeps do not recompile)."""

  epsilon: jax.Array
  step_size: jax.Array
  init_multiplier: jax.Array
  growth: jax.Array
  init_scale: jax.Array


def _box(x, mask, lo, hi, max_change):
  """Bounds ``lower <= d <= upper`` on the change, zero outside the patch."""
  lower = jnp.full_like(x, -jnp.inf) if lo is None else lo - x
  upper = jnp.full_like(x, jnp.inf) if hi is None else hi - x
  if max_change is not None:
    lower = jnp.maximum(lower, -max_change)
    upper = jnp.minimum(upper, max_change)
  # x is inside [lo, hi] (checked), so lower <= 0 <= upper; multiplying by the
  # mask would give inf * 0 = nan, hence `where`.
  lower = jnp.where(mask > 0, lower, 0.0)
  upper = jnp.where(mask > 0, upper, 0.0)
  return lower, upper


def solve_problem(features: Callable, x: jax.Array, offset: jax.Array, sign: jax.Array,
                  noise: jax.Array, hyper: _Hyper, lo: Any, hi: Any, max_change: Any, *,
                  patch_size: int, num_steps: int):
  """Solves one decoy problem for one image ``x [H, W, C]`` (un-batched).

  ``noise [H, W, C]`` in [0, 1) sets the random start
  ``s * init_scale * noise`` inside the patch.

  Returns ``(decoy, feasible, fell_back, layer_change, objective, multiplier)``.
  `generate_decoys` vmaps this over all problems; the tests call it in a loop.
  """
  mask = patch_mask(offset, x.shape, patch_size, x.dtype)
  lower, upper = _box(x, mask, lo, hi, max_change)
  f1 = lambda z: features(z[None])[0]  # noqa: E731
  ref = f1(x)
  eps = hyper.epsilon

  def evaluate(d):
    change = jnp.max(jnp.abs(f1(x + d) - ref))
    obj = jnp.sum(jax.nn.relu(sign * d))
    return change, obj

  def loss(d, lam):
    diff = jnp.abs(f1(x + d) - ref)
    obj = jnp.sum(jax.nn.relu(sign * d))
    penalty = jnp.sum(jax.nn.relu(diff - eps))
    return -obj + lam * penalty, (jnp.max(diff), obj)

  tx = optax.scale_by_adam()
  d0 = sign * hyper.init_scale * noise * mask
  d0 = jnp.clip(d0, lower, upper)
  zero = jnp.zeros_like(x)
  lam0 = jnp.asarray(hyper.init_multiplier, x.dtype)
  state0 = (d0, tx.init(d0), lam0, zero, jnp.zeros((), x.dtype))

  def step(state, t):
    d, opt_state, lam, best_d, best_obj = state
    (_, (change, obj)), g = jax.value_and_grad(loss, has_aux=True)(d, lam)
    feasible = change <= eps
    better = feasible & (obj > best_obj)
    best_d = jnp.where(better, d, best_d)
    best_obj = jnp.where(better, obj, best_obj)
    lam = jnp.where(feasible, lam, jnp.minimum(lam * hyper.growth, _MAX_MULTIPLIER))
    u, opt_state = tx.update(g * mask, opt_state)
    lr = hyper.step_size * (1.0 - 0.98 * t / num_steps)
    d = jnp.clip(d - lr * u, lower, upper)
    return (d, opt_state, lam, best_d, best_obj), None

  (d, _, lam, best_d, best_obj), _ = jax.lax.scan(
      step, state0, jnp.arange(num_steps, dtype=x.dtype))
  # Backtracking on the last iterate: a slightly infeasible d (the iterates
  # oscillate around the constraint boundary) usually becomes feasible when
  # shrunk a little; alpha = 1 checks the last iterate itself.
  alphas = jnp.asarray(_BACKTRACK, x.dtype)
  change, obj = jax.vmap(lambda a: evaluate(a * d))(alphas)
  final_feasible = change[0] <= eps
  ok = change <= eps
  k = jnp.argmax(jnp.where(ok, obj, -1.0))
  better = ok[k] & (obj[k] > best_obj)
  best_d = jnp.where(better, alphas[k] * d, best_d)
  best_obj = jnp.where(better, obj[k], best_obj)
  # Re-evaluate the constraint on the decoy actually returned.
  best_change, _ = evaluate(best_d)
  return (x + best_d, best_change <= eps, ~final_feasible, best_change, best_obj, lam)


def rbg_key(key: jax.Array, salt: int) -> jax.Array:
  """An ``rbg`` PRNG key (XLA's RngBitGenerator) derived from ``key`` and ``salt``.

  Threefry draws add about 2 s of XLA:CPU compile time each (measured with
  jax 0.10.2), more than the rest of the decoy solver, so the solver's random
  starts and the decoys' SmoothGrad noise use keys of this cheap-to-compile
  implementation. Deterministic for a given key, salt and backend.
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    data = jax.random.key_data(key)
  else:
    data = key
  data = data.reshape(-1).astype(jnp.uint32)
  salt = jnp.uint32(salt)
  data = jnp.concatenate([data ^ salt, (data + salt) ^ jnp.uint32(0x9E3779B9),
                          data + jnp.uint32(1)])[:4]
  return jax.random.wrap_key_data(data, impl="rbg")


def initial_noise(key: jax.Array, x: jax.Array, num_problems: int) -> jax.Array:
  """Uniform ``[B, 2n, H, W, C]`` noise of the random starts (one draw per call)."""
  return jax.random.uniform(rbg_key(key, 0), (x.shape[0], num_problems) + x.shape[1:],
                            x.dtype)


def _trivial(x, offset, sign, lo, hi, max_change, patch_size):
  """True when the box leaves the patch no room to move in the direction ``sign``."""
  mask = patch_mask(offset, x.shape, patch_size, x.dtype)
  lower, upper = _box(x, mask, lo, hi, max_change)
  room = jnp.where(sign > 0, upper, -lower)
  return ~jnp.any(room > 0)


def solve_all(features, x, key, hyper, lo, hi, max_change, *, patch_size, stride,
              num_steps, chunk_size):
  """Solves the ``2n`` problems of every image of ``x [B, H, W, C]``.

  Problems are flattened to one axis and solved ``chunk_size`` at a time by
  the vmapped `solve_problem`, chunks running sequentially in a `lax.map`.
  Problems whose box leaves no room in their sign's direction (e.g. the
  ``s = -1`` decoy of a black patch at ``lo``) have the input itself as their
  exact solution; they are sorted to the end, and chunks made only of them skip
  the solver (`lax.cond`), which on MNIST saves about a third of the work.
  """
  b = x.shape[0]
  offsets = jnp.asarray(patch_offsets(x.shape[1], x.shape[2], patch_size, stride))
  n2 = 2 * offsets.shape[0]
  total = b * n2
  img = jnp.repeat(jnp.arange(b), n2)
  idx = jnp.tile(jnp.arange(n2), b)
  signs = jnp.asarray(SIGNS, x.dtype)
  noise = initial_noise(key, x, n2)

  def mc_of(i):
    return None if max_change is None else max_change[i]

  trivial = jax.vmap(lambda i, j: _trivial(x[i], offsets[j // 2], signs[j % 2], lo, hi,
                                           mc_of(i), patch_size))(img, idx)
  order = jnp.argsort(trivial, stable=True)
  bs = total if chunk_size is None else min(chunk_size, total)
  num_chunks = -(-total // bs)
  pad = num_chunks * bs - total
  zeros = jnp.zeros((pad,), img.dtype)
  img_o = jnp.concatenate([img[order], zeros]).reshape(num_chunks, bs)
  idx_o = jnp.concatenate([idx[order], zeros]).reshape(num_chunks, bs)
  triv_o = jnp.concatenate([trivial[order], jnp.ones((pad,), bool)]).reshape(num_chunks, bs)

  def one(i, j):
    return solve_problem(features, x[i], offsets[j // 2], signs[j % 2],
                         noise[i, j], hyper, lo, hi, mc_of(i),
                         patch_size=patch_size, num_steps=num_steps)

  def unmoved(i, j):
    del j
    dt = x.dtype
    return (x[i], jnp.ones((bs,), bool), jnp.zeros((bs,), bool), jnp.zeros((bs,), dt),
            jnp.zeros((bs,), dt), jnp.full((bs,), hyper.init_multiplier, dt))

  def chunk(args):
    i, j, tr = args
    return jax.lax.cond(jnp.all(tr), unmoved, jax.vmap(one), i, j)

  out = jax.lax.map(chunk, (img_o, idx_o, triv_o))
  inverse = jnp.argsort(order)
  out = [o.reshape((num_chunks * bs,) + o.shape[2:])[:total][inverse] for o in out]
  dec, feas, fell, change, obj, lam = (o.reshape((b, n2) + o.shape[1:]) for o in out)
  return DecoyResult(decoys=dec, feasible=feas, fell_back=fell, moved=obj > 0,
                     layer_change=change, objective=obj, multiplier=lam, offsets=offsets)


@jit_with_callables(callables=("features",),
                    static_argnames=("patch_size", "stride", "num_steps", "chunk_size"))
def _generate_decoys(features, x, key, hyper, lo, hi, max_change, patch_size, stride,
                     num_steps, chunk_size):
  return solve_all(features, x, key, hyper, lo, hi, max_change, patch_size=patch_size,
                   stride=stride, num_steps=num_steps, chunk_size=chunk_size)


# ------------------------------------------------------------ validation ----
def check_features(features: Any, x: jax.Array, *, name: str = "layer") -> None:
  """Checks that ``features(x)`` maps ``[B, ...]`` to ``[B, ...]``."""
  if not callable(features):
    raise ValueError(f"`{name}` must be a function features(x) -> [B, ...] or a layer "
                     f"name; got {features!r}.")
  try:
    out = jax.eval_shape(features, jax.ShapeDtypeStruct(x.shape, x.dtype))
  except ValueError:
    raise
  except Exception as e:
    raise ValueError(f"`{name}` failed on x of shape {tuple(x.shape)}: {e}") from e
  if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != x.shape[0]:
    raise ValueError(f"`{name}` must map a batch [B, ...] to features [B, ...]; for x of "
                     f"shape {tuple(x.shape)} it returned {getattr(out, 'shape', type(out))}.")


def resolve_features(layer: Any, model: Any, x: jax.Array) -> Callable:
  """Returns the feature function ``F_l`` for ``layer``.

  ``layer`` is either a function ``features(x) -> [B, ...]`` or the name of a
  layer of ``model`` (resolved by `rattr_jax.models.feature_fn`; an unknown
  name raises ``ValueError`` listing the available names).
  """
  if isinstance(layer, str):
    if model is None:
      raise ValueError(f"`layer` is the name {layer!r}; pass the Flax model as `model=` "
                       "to resolve it, or pass a function features(x) -> [B, ...].")
    from rattr_jax.models import feature_fn
    features = feature_fn(model, layer)
    jax.eval_shape(features, jax.ShapeDtypeStruct(x.shape, x.dtype))  # unknown names raise
  else:
    features = layer
  check_features(features, x)
  return features


def check_geometry(x: jax.Array, patch_size: Any, stride: Any) -> tuple[int, int]:
  patch_size = V.check_positive_int(patch_size, name="patch_size")
  stride = patch_size if stride is None else V.check_positive_int(stride, name="stride")
  h, w = x.shape[1], x.shape[2]
  if patch_size > min(h, w):
    raise ValueError(f"`patch_size` {patch_size} is larger than the image ({h} x {w}).")
  return patch_size, stride


def check_bounds(input_range: Any, x: jax.Array):
  """Returns ``(lo, hi)`` as arrays (or None) and checks ``lo <= x <= hi``."""
  if input_range is None:
    return None, None
  try:
    lo, hi = input_range
  except (TypeError, ValueError):
    raise ValueError(f"`input_range` must be None or a pair (lo, hi); got "
                     f"{input_range!r}.") from None
  lo = None if lo is None else jnp.asarray(lo, x.dtype)
  hi = None if hi is None else jnp.asarray(hi, x.dtype)
  for v, nm in ((lo, "lo"), (hi, "hi")):
    if v is not None and v.ndim != 0:
      raise ValueError(f"`input_range` {nm} must be a scalar; got shape {tuple(v.shape)}.")
  if lo is not None and hi is not None and V.is_concrete(lo) and V.is_concrete(hi):
    if not float(lo) < float(hi):
      raise ValueError(f"`input_range` must satisfy lo < hi; got {input_range!r}.")
  if V.is_concrete(x):
    xn = np.asarray(x)
    if (lo is not None and V.is_concrete(lo) and xn.min() < float(lo)) or (
        hi is not None and V.is_concrete(hi) and xn.max() > float(hi)):
      raise ValueError(f"`x` must lie inside `input_range` {tuple(input_range)}; got values in "
                       f"[{xn.min():.4g}, {xn.max():.4g}]. Pass input_range=None for no range "
                       "constraint.")
  return lo, hi


def check_max_change(max_change: Any, x: jax.Array):
  """``None``, a scalar, ``[*F]`` or ``[B, *F]`` -> ``[B, *F]`` (non-negative)."""
  if max_change is None:
    return None
  V.check_nonnegative(max_change, name="max_change")
  return V.check_baseline(max_change, x, name="max_change")


def make_hyper(x, *, epsilon, step_size, init_multiplier, growth, init_scale) -> _Hyper:
  V.check_nonnegative(epsilon, name="epsilon")
  V.check_positive(step_size, name="step_size")
  V.check_positive(init_multiplier, name="init_multiplier")
  V.check_nonnegative(init_scale, name="init_scale")
  if V.is_concrete(growth) and not float(growth) >= 1.0:
    raise ValueError(f"`growth` must be >= 1; got {growth!r}.")
  dt = x.dtype
  return _Hyper(epsilon=jnp.asarray(epsilon, dt), step_size=jnp.asarray(step_size, dt),
                init_multiplier=jnp.asarray(init_multiplier, dt),
                growth=jnp.asarray(growth, dt), init_scale=jnp.asarray(init_scale, dt))


def generate_decoys(layer: Any, x: jax.Array, *, key: jax.Array, model: Any = None,
                    patch_size: int = 3, stride: int | None = None, epsilon: float = 0.1,
                    input_range: tuple[float, float] | None = (0.0, 1.0), max_change: Any = None,
                    num_steps: int = 100, step_size: float = 0.05,
                    init_multiplier: float = 1.0, growth: float = 1.02,
                    init_scale: float = 0.01, chunk_size: int | None = 256) -> DecoyResult:
  """DANCE decoys of a batch of images at layer ``F_l``: 2 per patch (signs +-1).

  See the module docstring for the optimisation problem and solver.

  Args:
    layer: the feature map ``F_l``: a function ``features(x) -> [B, ...]`` (any
      model) or the name of a layer of ``model`` (see
      `rattr_jax.models.layer_names`).
    x: images ``[B, H, W, C]`` (NHWC) inside ``input_range``.
    key: PRNG key for the random start inside each patch (required).
    model: the Flax NNX model when ``layer`` is a name.
    patch_size: side ``K`` of the square patch (all channels).
    stride: patch stride; default ``patch_size`` (non-overlapping tiles). A
      last patch flush with the border is added when needed (`patch_offsets`).
    epsilon: tolerance of ``||F_l(decoy) - F_l(x)||_inf``, in the units of
      layer ``l``; ``0`` allows only changes invisible to ``F_l``.
    input_range: valid input range ``(lo, hi)``, or ``None``.
    max_change: optional per-feature bound ``|decoy_i - x_i| <= max_change_i``
      (the paper's ``C2 delta_i``): a scalar, ``[H, W, C]`` or ``[B, H, W, C]``.
    num_steps: projected-Adam steps per problem.
    step_size: initial Adam step size (input units), decayed linearly to 2%.
    init_multiplier: initial penalty multiplier ``lambda``.
    growth: factor applied to ``lambda`` after each infeasible step (``>= 1``).
    init_scale: size of the random start ``s * U(0, init_scale)`` in the patch.
    chunk_size: decoy problems solved at once (memory bound); ``None`` solves
      all ``B * 2n`` together.

  Returns:
    `DecoyResult` with ``decoys [B, 2n, H, W, C]`` and per-decoy flags.

  References:
    Lu et al., "Improving Interpretability of Deep Neural Networks with
    Decoy-Enhanced Saliency Maps", ICML 2021. https://arxiv.org/abs/2002.00526
  """
  x = V.check_image_batch(x)
  V.check_key(key)
  patch_size, stride = check_geometry(x, patch_size, stride)
  features = resolve_features(layer, model, x)
  lo, hi = check_bounds(input_range, x)
  mc = check_max_change(max_change, x)
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  hyper = make_hyper(x, epsilon=epsilon, step_size=step_size, init_multiplier=init_multiplier,
                     growth=growth, init_scale=init_scale)
  return _generate_decoys(features, x, key, hyper, lo, hi, mc, patch_size, stride, num_steps,
                          chunk_size)
