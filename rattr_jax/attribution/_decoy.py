"""Decoy-enhanced saliency (DANCE): range aggregation of saliency over decoys.

``decoy_saliency`` generates the ``2n`` decoys of every image (see
`rattr_jax.attribution._decoy_solver`), explains each decoy with a base method
(gradient, SmoothGrad or integrated gradients) and aggregates the decoy maps
per feature by their range ``Z_i = max_j E(x~_j)_i - min_j E(x~_j)_i``
(``aggregation="mean"`` is the paper's worse ablation). Decoys whose layer
constraint does not hold are dropped from the aggregation and counted.

Why the range: for a ReLU network, Theorem 1 of the paper bounds
``|Z_i - 1/2 |sum_{k in patch} (x~+_k - x~-_k) H_{k,i}||`` by a constant, with
``H`` the input Hessian of the class score, so ``Z`` captures second-order
interactions inside the swappable patch. Consequently the range is **zero for
a model that is linear in its input** when the base method is the gradient (or
SmoothGrad): the gradient does not depend on the input (zero Hessian), so all
decoy maps coincide. The paper notes the method is ill-defined for linear
models; integrated gradients of a linear model, ``x * w``, still varies with
the decoy, so its range is ``|w_i| * (max - min of x~_i)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.attribution import _decoy_solver as S
from rattr_jax import core
from rattr_jax.attribution import _integrated, _smoothgrad

BASES = ("gradient", "smoothgrad", "integrated_gradients")
AGGREGATIONS = ("range", "mean")


@struct.dataclass
class DecoySaliency:
  """Result of `decoy_saliency`.

  Attributes:
    attribution: ``[B, H, W, C]`` aggregated decoy attribution (the range
      ``max - min`` over the feasible decoys' base attributions, or their mean).
    saliency: ``[B, H, W]`` the paper's post-processing of ``attribution``:
      absolute value, max over channels, winsorised at the 95th percentile and
      rescaled to [0, 1].
    num_decoys: ``[B]`` decoys generated per image (``2n``).
    num_used: ``[B]`` decoys aggregated (feasible ones).
    num_dropped: ``[B]`` decoys dropped because their constraint check failed.
    num_fell_back: ``[B]`` decoys whose final solver iterate was infeasible and
      that were replaced by their best feasible iterate (possibly ``x``).
    num_moved: ``[B]`` decoys that differ from ``x``.
    decoys: the full `DecoyResult` (per-decoy images and flags).
  """

  attribution: jax.Array
  saliency: jax.Array
  num_decoys: jax.Array
  num_used: jax.Array
  num_dropped: jax.Array
  num_fell_back: jax.Array
  num_moved: jax.Array
  decoys: S.DecoyResult


class _BaseSpec(struct.PyTreeNode):
  """Base explanation method: static structure plus traced continuous options."""

  name: str = struct.field(pytree_node=False)
  explain: Any  # a pytree (e.g. a `jax.tree_util.Partial`) or a function
  num_samples: int = struct.field(pytree_node=False)
  num_steps: int = struct.field(pytree_node=False)
  method: str = struct.field(pytree_node=False)
  stddev: jax.Array
  baseline: Any


def _explain_one(fn, spec: _BaseSpec, key, x1, t1):
  """Base attribution of one input ``x1 [*F]`` (called under `vmap`)."""
  xb, tb = x1[None], t1[None]
  if spec.name == "gradient":
    out = core.target_gradient(fn, xb, tb)
  elif spec.name == "smoothgrad":
    # The same key for every decoy: common random numbers, so the range over
    # decoys reflects the decoys and not SmoothGrad's Monte-Carlo noise.
    m1, _ = _smoothgrad.noisy_gradient_moments(fn, xb, tb, key, spec.stddev, spec.num_samples,
                                               None, moments=(1,))
    out = m1
  elif spec.name == "integrated_gradients":
    out = _integrated._integrated_gradients(fn, xb, tb, spec.baseline[None], spec.num_steps,
                                            spec.method, None)
  else:
    out = spec.explain(fn, xb, tb, key=key)
  return out[0]


def aggregate(maps: jax.Array, used: jax.Array, aggregation: str) -> jax.Array:
  """Range (``max - min``) or mean of ``maps [B, P, *F]`` over decoys with ``used [B, P]``.

  Images without any used decoy get a zero map.
  """
  w = used.reshape(used.shape + (1,) * (maps.ndim - 2))
  count = jnp.sum(used, axis=1).reshape((-1,) + (1,) * (maps.ndim - 2))
  if aggregation == "range":
    hi = jnp.max(jnp.where(w, maps, -jnp.inf), axis=1)
    lo = jnp.min(jnp.where(w, maps, jnp.inf), axis=1)
    return jnp.where(count > 0, hi - lo, 0.0)
  total = jnp.sum(jnp.where(w, maps, 0.0), axis=1)
  return total / jnp.maximum(count, 1)


def explain_decoys(fn, spec, res: S.DecoyResult, t, key, percentile, use_mean,
                   chunk_size) -> DecoySaliency:
  """Explains the decoys of ``res`` with the base method and aggregates them."""
  k_base = S.rbg_key(key, 1)
  b, p = res.feasible.shape
  feat = res.decoys.shape[2:]
  flat = res.decoys.reshape((b * p,) + feat)
  tt = jnp.repeat(t, p)
  maps = jax.lax.map(lambda a: _explain_one(fn, spec, k_base, *a), (flat, tt),
                     batch_size=chunk_size)
  maps = maps.reshape((b, p) + feat)
  used = res.feasible
  # Both aggregations are cheap; selecting with a traced flag avoids a recompile.
  attr = jnp.where(use_mean, aggregate(maps, used, "mean"), aggregate(maps, used, "range"))
  sal = core.normalize_map(core.reduce_channels(attr, "max_abs"), "winsorize",
                                percentile)
  count = lambda m: jnp.sum(m, axis=1).astype(jnp.int32)  # noqa: E731
  return DecoySaliency(attribution=attr, saliency=sal,
                       num_decoys=jnp.full((b,), p, jnp.int32), num_used=count(used),
                       num_dropped=count(~used), num_fell_back=count(res.fell_back),
                       num_moved=count(res.moved & used), decoys=res)


@jit_with_callables(callables=("fn", "features", "spec"),
                    static_argnames=("patch_size", "stride", "num_steps", "chunk_size"))
def _decoy_saliency(fn, features, spec, x, t, key, hyper, lo, hi, max_change, percentile,
                    use_mean, patch_size, stride, num_steps, chunk_size):
  res = S.solve_all(features, x, key, hyper, lo, hi, max_change, patch_size=patch_size,
                    stride=stride, num_steps=num_steps, chunk_size=chunk_size)
  return explain_decoys(fn, spec, res, t, key, percentile, use_mean, chunk_size)


@jit_with_callables(callables=("fn", "spec"), static_argnames=("chunk_size",))
def _from_decoys(fn, spec, res, t, key, percentile, use_mean, chunk_size):
  return explain_decoys(fn, spec, res, t, key, percentile, use_mean, chunk_size)


def _base_spec(base, x, *, num_samples, stddev, num_steps, method, baseline) -> _BaseSpec:
  if callable(base):
    return _BaseSpec(name="custom", explain=base, num_samples=0, num_steps=0, method="",
                     stddev=jnp.zeros((), x.dtype), baseline=None)
  V.check_choice(base, BASES, name="base")
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  V.check_nonnegative(stddev, name="stddev")
  V.check_choice(method, _integrated.METHODS, name="method")
  if base == "integrated_gradients" and method == "riemann_trapezoid" and num_steps < 2:
    raise ValueError("`num_steps` must be >= 2 for method='riemann_trapezoid'.")
  bl = V.check_baseline(baseline, x[:1])[0] if base == "integrated_gradients" else None
  return _BaseSpec(name=base, explain=None, num_samples=num_samples, num_steps=num_steps,
                   method=method, stddev=jnp.asarray(stddev, x.dtype), baseline=bl)


def decoy_saliency(fn: Callable, x: Float[Array, "B H W C"], target: Target, *,
                   key: PRNGKey, layer: Any = None, model: Any = None,
                   base: Any = "gradient",
                   aggregation: str = "range", patch_size: int = 3,
                   stride: int | None = None, epsilon: float = 0.1,
                   input_range: tuple[float, float] | None = (0.0, 1.0), max_change: Any = None,
                   num_steps: int = 100, step_size: float = 0.05,
                   init_multiplier: float = 1.0, growth: float = 1.02,
                   init_scale: float = 0.01, chunk_size: int | None = 256,
                   num_samples: int = 50, stddev: float = 0.15,
                   ig_num_steps: int = 20, ig_method: str = "riemann_trapezoid",
                   baseline: Any = None, percentile: float = 95.0,
                   decoys: S.DecoyResult | None = None) -> DecoySaliency:
  """Decoy-enhanced saliency (DANCE) of a batch of images.

  For each image: generate ``2n`` decoys (``n`` patches of ``patch_size`` slid
  by ``stride``, signs +-1; each changes only its patch as much as possible
  while ``||F_l(decoy) - F_l(x)||_inf <= epsilon``), explain every decoy with
  the ``base`` method, and aggregate per feature by the range ``max - min``
  over the decoys. Infeasible decoys are never used (see `DecoySaliency`).

  Args:
    fn: model, mapping a batch ``[B, H, W, C]`` to logits ``[B, C']``.
    x: images ``[B, H, W, C]`` (NHWC) inside ``input_range``.
    target: class index, an int or an int array ``[B]``.
    layer: ``F_l``, a function ``features(x) -> [B, ...]`` (any model), or the
      name of a layer of ``model`` (`rattr_jax.models.layer_names`; an unknown
      name raises ``ValueError`` listing the names). A name is resolved (and
      the function compiled) on every call; pass
      ``rattr_jax.models.feature_fn(model, name)`` once for repeated calls.
    key: PRNG key (required): decoy random starts and SmoothGrad noise.
    model: the Flax NNX model when ``layer`` is a name.
    base: ``"gradient"``, ``"smoothgrad"``, ``"integrated_gradients"``, or an
      explainer ``explainer(fn, x, target, *, key) -> [B, H, W, C]`` (it is
      called under `lax.map` on one decoy at a time, with the same key for
      every decoy).
    aggregation: ``"range"`` (DANCE) or ``"mean"`` (the paper's ablation).
    patch_size, stride, epsilon, input_range, max_change, num_steps, step_size,
      init_multiplier, growth, init_scale: decoy generation, see
      `rattr_jax.attribution.generate_decoys`.
    chunk_size: decoy problems solved (and decoys explained) at once; bounds
      memory. ``None`` processes all ``B * 2n`` together.
    num_samples, stddev: SmoothGrad options (the same noise is used for every
      decoy of a call: common random numbers).
    ig_num_steps, ig_method, baseline: integrated-gradients options.
    percentile: winsorisation percentile of the post-processed ``saliency``.
    decoys: optional decoys of ``x`` from `generate_decoys` (with the same
      ``key``); generation is skipped and ``layer`` and the generation options
      are ignored. Decoys depend only on ``x`` and layer ``l``, not on the
      base method, so one generation serves gradient, SmoothGrad and IG.

  Returns:
    `DecoySaliency`: ``attribution [B, H, W, C]``, the post-processed
    ``saliency [B, H, W]`` in [0, 1], decoy counts and the decoys.

  References:
    Lu, Guo, Xing, Noble, "Improving Interpretability of Deep Neural Networks
    with Decoy-Enhanced Saliency Maps", ICML 2021. https://arxiv.org/abs/2002.00526
  """
  x = V.check_image_batch(x)
  num_classes = V.num_classes_of(fn, x)
  t = V.check_target(target, x.shape[0], num_classes)
  V.check_key(key)
  V.check_choice(aggregation, AGGREGATIONS, name="aggregation")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  if not 0.0 <= float(percentile) <= 100.0:
    raise ValueError(f"`percentile` must lie in [0, 100]; got {percentile}.")
  spec = _base_spec(base, x, num_samples=num_samples, stddev=stddev, num_steps=ig_num_steps,
                    method=ig_method, baseline=baseline)
  if spec.explain is not None:
    core.check_explainer(spec.explain, fn, x[:1], t[:1], key, name="base")
  pct = jnp.asarray(percentile, x.dtype)
  use_mean = jnp.asarray(aggregation == "mean")
  if decoys is not None:
    if not isinstance(decoys, S.DecoyResult):
      raise ValueError(f"`decoys` must be a DecoyResult; got {type(decoys).__name__}.")
    shape = tuple(decoys.decoys.shape)
    if len(shape) != 5 or shape[0] != x.shape[0] or shape[2:] != tuple(x.shape[1:]):
      raise ValueError(f"`decoys` must hold decoys [B, 2n, H, W, C] of `x` "
                       f"{tuple(x.shape)}; got {shape}.")
    return _from_decoys(fn, spec, decoys, t, key, pct, use_mean, chunk_size)
  if layer is None:
    raise ValueError("`layer` is required (a function features(x) -> [B, ...] or a layer "
                     "name of `model`) unless precomputed `decoys` are passed.")
  patch_size, stride = S.check_geometry(x, patch_size, stride)
  features = S.resolve_features(layer, model, x)
  lo, hi = S.check_bounds(input_range, x)
  mc = S.check_max_change(max_change, x)
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  hyper = S.make_hyper(x, epsilon=epsilon, step_size=step_size,
                       init_multiplier=init_multiplier, growth=growth, init_scale=init_scale)
  return _decoy_saliency(fn, features, spec, x, t, key, hyper, lo, hi, mc, pct, use_mean,
                         patch_size, stride, num_steps, chunk_size)


def decoy_attribution(fn: Callable, x: Float[Array, "B H W C"], target: Target, *,
                      key: PRNGKey, layer: Any, **options) -> Float[Array, "B H W C"]:
  """DANCE as an explainer: the aggregated decoy attribution shaped like ``x``.

  ``decoy_saliency(fn, x, target, key=key, layer=layer, **options).attribution``.
  It is differentiable in ``x`` (through the decoy solver's `lax.scan` and the
  base explanation), so explanation attacks can attack it. Bind its settings
  with ``rattr_jax.explainers.get("decoy", layer=..., model=..., ...)``, which
  resolves a layer name once.
  """
  return decoy_saliency(fn, x, target, key=key, layer=layer, **options).attribution


def resolve_layer(layer: Any, model: Any) -> Any:
  """A layer name of ``model`` -> its features function; a function passes through."""
  if isinstance(layer, str):
    if model is None:
      raise ValueError(f"`layer` is the name {layer!r}; pass the Flax model as `model=`.")
    from rattr_jax.models import feature_fn
    return feature_fn(model, layer)  # unknown names raise on the first call
  if layer is None or not callable(layer):
    raise ValueError("`layer` is required: a function features(x) -> [B, ...] or a layer "
                     "name of `model`.")
  return layer


def default_layer(model: Any) -> str:
  """The layer ``rattr explain --method decoy`` (and the study) constrains by default.

  A model may name it in a ``DECOY_LAYER`` class attribute: the zoo CNNs use
  ``conv2`` (pre-activation output of the second convolution, after a ReLU and
  a pooling; the setting of ``benchmarks/dance_eval.py``) and `ResNet18` uses
  ``blocks.1`` (the post-activation features after its first stage). Other
  models use their second submodule (in `layer_names` order), or the only one.
  """
  from rattr_jax.models import layer_names
  names = layer_names(model)
  if getattr(model, "DECOY_LAYER", None) in names:
    return model.DECOY_LAYER
  if not names:
    raise ValueError("`model` has no submodules to use as the decoy layer.")
  return names[1] if len(names) > 1 else names[0]
