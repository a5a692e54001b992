"""Machinery shared by the perturbation-based metrics.

* Validation of the arguments every metric shares (before tracing).
* Per-example PRNG keys: ``key`` is one key (split into ``B`` keys inside the
  compiled program) or a batch of ``B`` keys. Sample ``s`` of example ``b``
  uses ``fold_in(keys[b], s)``, so its noise does not depend on the batch
  size, on the other examples or on ``chunk_size`` (the chunking): evaluating
  one example with ``key=keys[b:b+1]`` gives the same value as the batch
  (for a deterministic explainer; a stochastic one gets one key per call,
  `rattr_jax.core.call_key`).
* `map_chunks`: evaluates ``num_samples`` perturbations ``chunk_size`` at a time
  inside one `lax.map`, each chunk as one call of the model / explainer
  on ``chunk_size * B`` inputs. Memory is bounded by ``chunk_size``, never by
  ``num_samples``.
* Reductions over samples with a prediction-flip policy.
* The registry of map-similarity metrics used by `random_perturbation_similarity`
  and `attack_similarity`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax import _validation as V
from rattr_jax import core
from rattr_jax.core import chunk_indices as map_chunks  # noqa: F401
from rattr_jax.core import example_keys  # noqa: F401
from rattr_jax.core import map_shape_of  # noqa: F401
from rattr_jax.metrics import _similarity

CHANGE_NORMS = ("l2", "l1", "linf")  # `change_norm` of the sensitivity metrics
NOISES = ("uniform", "gaussian")
ON_FLIP = ("ignore", "exclude", "nan")
OUTPUTS = ("probability", "logit")
BASELINES = ("zero", "mean", "median", "min")

# name -> (function(a, b) -> [B], higher_is_better, needs_k)
SIMILARITIES: dict[str, tuple[Callable, bool, bool]] = {
    "pearson": (_similarity.pearson, True, False),
    "spearman": (_similarity.spearman, True, False),
    "kendall": (_similarity.kendall_tau, True, False),
    "cosine": (_similarity.cosine_similarity, True, False),
    "ssim": (_similarity.ssim, True, False),
    "mse": (_similarity.mse, False, False),
    "topk": (_similarity.topk_intersection, True, True),
    "center_shift": (_similarity.center_shift, False, False),
}


# ------------------------------------------------------------- validation ----
def prepare_model_explainer(fn: Any, explainer: Any, x: Any, target: Any, key: Any = None, *,
                            perturbs: bool, what: str) -> tuple[jax.Array, jax.Array, Any]:
  """Validates ``fn``, ``x``, ``target``, ``key`` (one or ``B`` keys, or ``None``) and the explainer.

  ``perturbs``: the metric explains perturbed inputs (a precomputed explainer
  is rejected). Returns ``(x, t, key)`` with ``key`` typed (or ``None``).
  """
  if not callable(fn):
    raise ValueError(f"`fn` (the model, [B, *F] -> logits [B, C]) is required; got "
                     f"{type(fn).__name__}.")
  x, t = core.prepare(fn, x, target)
  if key is not None:
    key = core.check_key_or_keys(key, x.shape[0])
  core.check_explainer(explainer, fn, x, t, core.call_key(key, 0), allow_precomputed=not perturbs,
                       what=what)
  return x, t, key


def check_metric_key(key: Any, batch: int, *, name: str = "key") -> jax.Array:
  """Accepts one PRNG key or ``B`` keys (typed ``[B]`` or raw ``[B, 2]``)."""
  return core.check_key_or_keys(key, batch, name=name)


def check_flip(on_flip: str) -> str:
  return V.check_choice(on_flip, ON_FLIP, name="on_flip")


def check_range(input_range: Any) -> tuple[float, float] | None:
  """The valid input box ``(lo, hi)`` perturbed inputs are clipped to, or ``None``."""
  return core.check_input_range(input_range)


def check_removal_baseline(baseline: Any, x: jax.Array) -> Any:
  """A removal baseline: a name in `BASELINES`, a scalar, ``[*F]`` or ``[B, *F]``.

  Returns the name (str) or an array broadcast to ``x``'s shape.
  """
  if isinstance(baseline, str):
    return V.check_choice(baseline, BASELINES, name="baseline")
  return V.check_baseline(baseline, x, name="baseline")


def resolve_baseline(baseline: Any, x: jax.Array) -> jax.Array:
  """Inside jit: the removal value for every feature, shaped like ``x``.

  ``"mean"``, ``"median"`` and ``"min"`` are per-example statistics over all
  features (Quantus's ``"mean"`` and ``"black"``).
  """
  if not isinstance(baseline, str):
    return baseline
  if baseline == "zero":
    return jnp.zeros_like(x)
  flat = x.reshape(x.shape[0], -1)
  stat = {"mean": jnp.mean, "median": jnp.median, "min": jnp.min}[baseline](flat, axis=1)
  return jnp.broadcast_to(stat.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def check_similarity(similarity: str, k: Any, x: jax.Array, reduce: str) -> int | None:
  V.check_choice(similarity, SIMILARITIES, name="similarity")
  V.check_choice(reduce, core.REDUCTIONS, name="reduce")
  _, _, needs_k = SIMILARITIES[similarity]
  map_shape = map_shape_of(x.shape, reduce)
  if similarity in ("ssim", "center_shift"):
    if len(map_shape) not in ((3,) if similarity == "center_shift" else (3, 4)):
      raise ValueError(f"`similarity={similarity!r}` needs image maps [B, H, W]; the maps of x "
                       f"{tuple(x.shape)} with reduce={reduce!r} have shape {map_shape}.")
    if similarity == "ssim" and min(map_shape[1:3]) < 7:
      raise ValueError(f"`similarity='ssim'` needs maps of at least 7x7; got {map_shape}.")
  if needs_k:
    if k is None:
      raise ValueError(f"`k` is required for similarity={similarity!r}.")
    k = V.check_positive_int(k, name="k")
    n = int(np.prod(map_shape[1:]))
    if k > n:
      raise ValueError(f"`k` ({k}) must not exceed the number of map features ({n}).")
    return k
  return None


def to_map(attr: jax.Array, reduce: str) -> jax.Array:
  return core.reduce_channels(attr, reduce)


def similarity_of(similarity: str, a: jax.Array, b: jax.Array, k: int | None) -> jax.Array:
  fun, _, needs_k = SIMILARITIES[similarity]
  return fun(a, b, k) if needs_k else fun(a, b)


# ------------------------------------------------------------ inside jit ----
def sample_noise(keys: jax.Array, idx: jax.Array, feat: tuple[int, ...], dtype,
                 epsilon: jax.Array, noise: str, norm: str = "linf") -> jax.Array:
  """Noise ``[S, B, *F]`` for sample indices ``idx [S]`` and example keys ``keys [B]``.

  * ``noise="uniform"``: uniform in the ``norm`` ball of radius ``epsilon``
    (``linf``: each feature ``U(-eps, eps)``; ``l2``: uniform in the L2 ball).
  * ``noise="gaussian"``: ``N(0, epsilon^2)`` per feature (unbounded).
  """
  d = int(np.prod(feat))

  def one(k):
    # One flat draw per key: XLA:CPU compiles a multi-dimensional (or vmapped)
    # threefry draw about 5x slower (~2 s) than a flat one inside `lax.map`.
    if noise == "gaussian":
      return jax.random.normal(k, (d,), dtype)
    if norm == "linf":
      return jax.random.uniform(k, (d,), dtype, -1.0, 1.0)
    k1, k2 = jax.random.split(k)
    g = jax.random.normal(k1, (d,), dtype)
    r = jax.random.uniform(k2, (), dtype) ** (1.0 / d)
    return r * g / jnp.linalg.norm(g)

  ks = jax.vmap(lambda s: jax.vmap(lambda k: jax.random.fold_in(k, s))(keys))(idx)  # [S, B]
  unit = jax.lax.map(one, ks.reshape(-1))
  return epsilon * unit.reshape(idx.shape + keys.shape + tuple(feat))


def explain_many(explainer: Callable, fn: Callable, xs: jax.Array, t: jax.Array,
                 key: jax.Array | None) -> jax.Array:
  """Explains ``xs [S, B, *F]`` in one explainer call on ``S * B`` inputs."""
  s, b = xs.shape[:2]
  flat = xs.reshape((s * b,) + xs.shape[2:])
  return explainer(fn, flat, jnp.tile(t, s), key=key).reshape(xs.shape)


def clip_to(xs: jax.Array, input_range) -> jax.Array:
  return xs if input_range is None else jnp.clip(xs, input_range[0], input_range[1])


def predict_many(fn: Callable, xs: jax.Array) -> jax.Array:
  """Predicted classes ``[S, B]`` of ``xs [S, B, *F]``."""
  s, b = xs.shape[:2]
  return jnp.argmax(fn(xs.reshape((s * b,) + xs.shape[2:])), axis=-1).reshape(s, b)


def logits_many(fn: Callable, xs: jax.Array) -> jax.Array:
  s, b = xs.shape[:2]
  out = fn(xs.reshape((s * b,) + xs.shape[2:]))
  return out.reshape((s, b) + out.shape[1:])


def flat_norm(v: jax.Array, norm: str, batch_dims: int = 1) -> jax.Array:
  """Norm over all but the first ``batch_dims`` axes."""
  v = v.reshape(v.shape[:batch_dims] + (-1,))
  if norm == "l2":
    return jnp.sqrt(jnp.sum(v * v, axis=-1))
  if norm == "l1":
    return jnp.sum(jnp.abs(v), axis=-1)
  return jnp.max(jnp.abs(v), axis=-1)


def safe_l2(v: jax.Array, batch_dims: int = 1) -> jax.Array:
  """L2 norm over the non-batch axes, exactly 0 at 0 with a finite (zero) gradient."""
  v = v.reshape(v.shape[:batch_dims] + (-1,))
  s = jnp.sum(v * v, axis=-1)
  pos = s > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def target_output(logits: jax.Array, t: jax.Array, output: str) -> jax.Array:
  """``[..., C]`` logits -> ``[...]`` target logit or softmax probability."""
  if output == "probability":
    logits = jax.nn.softmax(logits, axis=-1)
  t = jnp.broadcast_to(t, logits.shape[:-1])
  return jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]


def reduce_samples(values: jax.Array, valid: jax.Array | None, on_flip: str,
                   how: str) -> jax.Array:
  """Reduces ``values [S, B]`` over samples with the flip policy.

  * ``ignore``: every sample counts.
  * ``exclude``: samples whose prediction changed are left out; NaN when no
    sample is left.
  * ``nan``: NaN as soon as one sample changed the prediction (Quantus's
    ``return_nan_when_prediction_changes=True``).
  """
  if on_flip == "ignore" or valid is None:
    return jnp.max(values, axis=0) if how == "max" else jnp.mean(values, axis=0)
  nan = jnp.asarray(jnp.nan, values.dtype)
  if on_flip == "nan":
    red = jnp.max(values, axis=0) if how == "max" else jnp.mean(values, axis=0)
    return jnp.where(jnp.all(valid, axis=0), red, nan)
  count = jnp.sum(valid, axis=0)
  if how == "max":
    red = jnp.max(jnp.where(valid, values, -jnp.inf), axis=0)
  else:
    red = jnp.sum(jnp.where(valid, values, 0.0), axis=0) / jnp.maximum(count, 1)
  return jnp.where(count > 0, red, nan)
