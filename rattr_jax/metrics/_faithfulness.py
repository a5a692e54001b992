"""Faithfulness of attributions: SENN's faithfulness estimate and insertion/deletion curves.

Every function takes the model ``fn`` and an explainer
``explainer(fn, x, target, *, key)`` (`rattr_jax.explainers`); saved
attributions shaped like ``x`` (e.g. SENN's relevances mapped to features, or
the map of an attacked input) are scored through
``rattr_jax.explainers.precomputed(maps)``. These metrics draw no random
numbers: ``key`` defaults to ``None`` and is only forwarded to the explainer
(a stochastic explainer needs it).

Removed features are replaced by a *baseline*: ``"zero"`` (default),
``"mean"``, ``"median"`` or ``"min"`` (per-example statistics over all
features, Quantus's ``"mean"`` and ``"black"``), a scalar, or an array ``[*F]``
or ``[B, *F]`` (e.g. the training median per feature, as SENN's tabular code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax import core
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax.metrics import _common as C
from rattr_jax.core import pearson_rows as _pearson_flat


@struct.dataclass
class CurveResult:
  """Insertion or deletion curve and its summaries.

  Attributes:
    auc: ``[B]`` trapezoidal area under ``curve`` over ``fractions`` in [0, 1].
    aopc: ``[B]`` area over the perturbation curve: for deletion the mean drop
      ``mean_i (curve_0 - curve_i)`` (Samek et al.), for insertion the mean of
      the curve (the gradient-alignment paper's "AOPC" of insertion).
    curve: ``[B, num_steps + 1]`` model output after each step (step 0: nothing
      inserted / deleted).
    fractions: ``[num_steps + 1]`` fraction of features inserted / deleted.
  """

  auc: jax.Array
  aopc: jax.Array
  curve: jax.Array
  fractions: jax.Array


# ---------------------------------------------------- faithfulness estimate ----
def _groups(feat: tuple[int, ...], patch_size: int | None) -> tuple[np.ndarray, int]:
  """Feature-group id of every element of ``[*F]``, and the number of groups."""
  n = int(np.prod(feat))
  if patch_size is None:
    return np.arange(n, dtype=np.int32).reshape(feat), n
  h, w, c = feat
  nh, nw = -(-h // patch_size), -(-w // patch_size)
  rows = np.arange(h) // patch_size
  cols = np.arange(w) // patch_size
  gid = (rows[:, None] * nw + cols[None, :]).astype(np.int32)
  return np.broadcast_to(gid[:, :, None], feat).copy(), nh * nw


@jit_with_callables(callables=("fn", "explainer", "baseline"),
                    static_argnames=("patch_size", "output", "chunk_size"))
def _faithfulness_estimate(fn, explainer, x, t, key, baseline, patch_size, output, chunk_size):
  bsz, feat = x.shape[0], x.shape[1:]
  attr = explainer(fn, x, t, key=core.call_key(key, 0))
  base = C.resolve_baseline(baseline, x)
  gid_np, num_groups = _groups(feat, patch_size)
  gid = jnp.asarray(gid_np)
  flat_gid = gid.reshape(-1)
  attr_groups = jax.vmap(lambda a: jax.ops.segment_sum(a.reshape(-1), flat_gid, num_groups))(attr)
  p0 = C.target_output(fn(x), t, output)

  def chunk(idx):
    mask = gid[None] == idx.reshape((-1,) + (1,) * len(feat))       # [c, *F]
    xs = jnp.where(mask[:, None], base[None], x[None])               # [c, B, *F]
    p = C.target_output(C.logits_many(fn, xs), t[None], output)       # [c, B]
    return p0[None] - p

  drops = C.map_chunks(chunk, num_groups, chunk_size)                 # [G, B]
  return _pearson_flat(attr_groups, drops.T)


def faithfulness_estimate(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                          target: Target, *, key: PRNGKey | None = None,
                          baseline: Any = "zero", patch_size: int | None = None,
                          output: str = "probability",
                          chunk_size: int | None = 64) -> Float[Array, "B"]:
  """SENN's faithfulness estimate: attributions vs. the effect of removing each feature.

  For every feature (or patch) ``i``: ``drop_i = p(x) - p(x with i set to the
  baseline)``, with ``p`` the target's softmax probability (``output="logit"``:
  its logit). The estimate is the Pearson correlation, over ``i``, between
  ``drop_i`` and the attribution summed over ``i``. **Higher is better** (1:
  the attribution ranks and scales features exactly by their removal effect).
  A linear model's input-times-gradient has estimate 1 with ``baseline="zero"``
  and ``output="logit"``. NaN if the attribution or the drops are constant.

  Quantus's FaithfulnessEstimate with ``features_in_step=1`` is the
  ``patch_size=None`` case (it removes groups of ``features_in_step``
  consecutive features in attribution order; we remove spatial patches,
  as SENN's image experiments). Quantus's defaults differ: logits
  (``softmax=False``), ``"black"`` baseline (per-example minimum) and
  attributions normalised by their maximum (which leaves the correlation
  unchanged).

  Args:
    fn: model ``[B, *F] -> [B, C]``.
    explainer: ``explainer(fn, x, target, *, key)``, or
      ``rattr_jax.explainers.precomputed(maps)`` for saved attributions.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: forwarded to the explainer (needed by stochastic ones only).
    baseline: removal value (see the module docstring).
    patch_size: ``None``: every element of ``x`` is a feature. An int ``p``
      (NHWC images only): ``p x p`` patches over all channels.
    output: ``"probability"`` (SENN) or ``"logit"``.
    chunk_size: features removed per call of ``fn`` (each is ``B`` inputs).
      ``None``: all at once, which for images is ``H*W*C*B`` inputs.

  Returns:
    ``[B]`` correlations in [-1, 1].

  References:
    Alvarez-Melis, Jaakkola, "Towards Robust Interpretability with
    Self-Explaining Neural Networks", NeurIPS 2018. https://arxiv.org/abs/1806.07538
  """
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=False,
                                        what="faithfulness_estimate")
  baseline = C.check_removal_baseline(baseline, x)
  if patch_size is not None:
    patch_size = V.check_positive_int(patch_size, name="patch_size")
    if x.ndim != 4:
      raise ValueError(f"`patch_size` needs NHWC images [B, H, W, C]; got x of shape "
                       f"{tuple(x.shape)}.")
  if _groups(tuple(x.shape[1:]), patch_size)[1] < 2:
    raise ValueError(f"`patch_size` ({patch_size}) leaves a single feature group on "
                     f"{tuple(x.shape[1:3])} images; the correlation needs at least 2 (use a "
                     f"smaller patch).")
  V.check_choice(output, C.OUTPUTS, name="output")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  return _faithfulness_estimate(fn, explainer, x, t, key, baseline, patch_size, output,
                                chunk_size)


# ------------------------------------------------------ insertion / deletion ----
@jit_with_callables(callables=("fn", "explainer", "baseline"),
                    static_argnames=("mode", "num_steps", "reduce", "output", "chunk_size"))
def _curve(fn, explainer, x, x_rank, t, key, baseline, mode, num_steps, reduce, output,
           chunk_size):
  bsz, feat = x.shape[0], x.shape[1:]
  attr = explainer(fn, x_rank, t, key=core.call_key(key, 0))
  scores = core.reduce_channels(attr, reduce)          # [B, *M], M = feature map shape
  map_shape = scores.shape[1:]
  n = int(np.prod(map_shape))
  flat = scores.reshape(bsz, -1)
  order = jnp.argsort(-flat, axis=1, stable=True)           # ties: lower index first
  ranks = jnp.argsort(order, axis=1).reshape(scores.shape)  # rank of every map feature
  if len(map_shape) < len(feat):                             # pixel ranks cover all channels
    ranks = ranks[..., None]
  counts = jnp.asarray((np.arange(num_steps + 1) * n) // num_steps, jnp.int32)
  base = C.resolve_baseline(baseline, x)

  def chunk(idx):
    k = counts[idx].reshape((-1,) + (1,) * (x.ndim))          # [c, 1, ..., 1]
    chosen = ranks[None] < k                                   # [c, B, *F or *M+1]
    if mode == "insertion":
      xs = jnp.where(chosen, x[None], base[None])
    else:
      xs = jnp.where(chosen, base[None], x[None])
    return C.target_output(C.logits_many(fn, xs), t[None], output)  # [c, B]

  curve = C.map_chunks(chunk, num_steps + 1, chunk_size).T  # [B, K+1]
  fractions = counts.astype(x.dtype) / n
  auc = jnp.trapezoid(curve, fractions, axis=-1)
  if mode == "insertion":
    aopc = jnp.mean(curve, axis=-1)
  else:
    aopc = jnp.mean(curve[:, :1] - curve, axis=-1)
  return CurveResult(auc=auc, aopc=aopc, curve=curve, fractions=fractions)


def _run_curve(mode, fn, explainer, x, x_rank, target, key, num_steps, baseline, reduce, output,
               chunk_size):
  if x_rank is None:
    x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=False,
                                          what=mode)
    x_rank = x
  else:
    if not callable(fn):
      raise ValueError("`fn` (the model, [B, *F] -> logits [B, C]) is required.")
    x, t = core.prepare(fn, x, target)
    x_rank = V.check_batch(x_rank, name="x_adv")
    V.check_same_shape(x, x_rank, names=("x", "x_adv"))
    _, _, key = C.prepare_model_explainer(fn, explainer, x_rank, t, key, perturbs=False,
                                          what="adversarial_insertion")
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  baseline = C.check_removal_baseline(baseline, x)
  V.check_choice(reduce, core.REDUCTIONS, name="reduce")
  V.check_choice(output, C.OUTPUTS, name="output")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  n = int(np.prod(C.map_shape_of(tuple(x.shape), reduce)[1:]))
  if num_steps > n:
    raise ValueError(f"`num_steps` ({num_steps}) must not exceed the number of features ({n}).")
  return _curve(fn, explainer, x, x_rank, t, key, baseline, mode, num_steps, reduce, output,
                chunk_size)


_CURVE_ARGS = """
  Args:
    fn: model ``[B, *F] -> [B, C]``.
    explainer: ``explainer(fn, x, target, *, key)``, or
      ``rattr_jax.explainers.precomputed(maps)`` for saved attributions.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: forwarded to the explainer (needed by stochastic ones only).
    num_steps: the curve has ``num_steps + 1`` points; step ``i`` has
      ``floor(i n / num_steps)`` of the ``n`` features inserted / deleted.
    baseline: value of the features not (yet) inserted / already deleted (see
      the module docstring).
    reduce: how NHWC attributions become per-pixel scores (``abs_sum``,
      ``sum``, ``max_abs``; pixels are inserted with all their channels), or
      ``none`` to rank every element. Other ranks are ranked element-wise
      (``abs`` for ``abs_sum``/``max_abs``). Ties go to the lower index.
    output: ``"probability"`` (softmax of the target) or ``"logit"``.
    chunk_size: curve points evaluated per call of ``fn`` (each is ``B``
      inputs); ``None``: all at once.

  Returns:
    `CurveResult` with ``[B]`` fields ``auc`` and ``aopc``, the ``curve``
    ``[B, num_steps + 1]`` and ``fractions``.
"""


def insertion(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."], target: Target,
              *, key: PRNGKey | None = None, num_steps: int = 20, baseline: Any = "zero",
              reduce: str = "abs_sum", output: str = "probability",
              chunk_size: int | None = None) -> CurveResult:
  return _run_curve("insertion", fn, explainer, x, None, target, key, num_steps, baseline,
                    reduce, output, chunk_size)


def deletion(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."], target: Target,
             *, key: PRNGKey | None = None, num_steps: int = 20, baseline: Any = "zero",
             reduce: str = "abs_sum", output: str = "probability",
             chunk_size: int | None = None) -> CurveResult:
  return _run_curve("deletion", fn, explainer, x, None, target, key, num_steps, baseline,
                    reduce, output, chunk_size)


def adversarial_insertion(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                          target: Target, x_adv: Float[Array, "B ..."], *,
                          key: PRNGKey | None = None, num_steps: int = 20,
                          baseline: Any = "zero", reduce: str = "abs_sum",
                          output: str = "probability",
                          chunk_size: int | None = None) -> CurveResult:
  return _run_curve("insertion", fn, explainer, x, x_adv, target, key, num_steps, baseline,
                    reduce, output, chunk_size)


insertion.__doc__ = """Insertion curve: the model output as the top-ranked features are inserted.

  Starting from the baseline, the ``floor(i n / num_steps)`` features with the
  largest scores are copied from ``x`` (step ``i = 0..num_steps``); the curve
  is the target's output at each step, all steps evaluated together. The
  gradient-alignment paper inserts 20 ratios with removed pixels at 0 (the
  dataset mean in normalised space) and reports the mean softmax probability
  (``aopc`` here). **Higher is better** for ``auc`` and ``aopc``.

  References:
    Petsiuk, Das, Saenko, "RISE", BMVC 2018 (insertion/deletion);
    Joo et al., "Towards More Robust Interpretation via Local Gradient
    Alignment", AAAI 2023.
""" + _CURVE_ARGS

deletion.__doc__ = """Deletion curve (pixel flipping): the model output as top features are removed.

  The ``floor(i n / num_steps)`` features with the largest scores are set to
  the baseline (step ``i = 0..num_steps``). With ``reduce="sum"`` on
  single-channel images (or ``"none"``) and ``baseline="min"`` this is
  Quantus's PixelFlipping with ``features_in_step = n / num_steps`` (its curve
  is ``curve[:, 1:]``, with its default ``softmax=True``, i.e. ``output="probability"``).
  **Lower is better** for ``auc``; **higher is
  better** for ``aopc`` (the mean drop, Samek et al.).

  References:
    Bach et al., "On Pixel-Wise Explanations ... by Layer-Wise Relevance
    Propagation", PLoS ONE 2015; Samek et al., "Evaluating the Visualization
    of What a Deep Neural Network Has Learned", IEEE TNNLS 2017.
""" + _CURVE_ARGS

adversarial_insertion.__doc__ = """Adversarial insertion: rank by the attacked map, insert clean pixels.

  The features are ranked by the explanation of the attacked input ``x_adv``
  (``explainer(fn, x_adv, target, key=...)``, or ``precomputed(maps)`` of
  maps computed on ``x_adv``), but the inserted values come from the clean
  ``x``. An attack that moved the map to irrelevant pixels gives a low curve.
  **Higher is better.** ``x_adv`` (data, positional after ``target``) has the
  shape of ``x``; other arguments as `insertion`.

  References:
    Joo et al., "Towards More Robust Interpretation via Local Gradient
    Alignment", AAAI 2023 ("Adv-Insertion").
""" + _CURVE_ARGS
