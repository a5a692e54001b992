"""Machinery shared by the perturbation-based metrics.

* Validation of the arguments every metric shares (before tracing).
* Per-example PRNG keys: ``key`` is one key (split into ``B`` keys inside the
  compiled program) or a batch of ``B`` keys. Sample ``s`` of example ``b``
  uses ``fold_in(keys[b], s)``, so its noise does not depend on the batch
  size, on the other examples or on ``batch_size`` (the chunking): evaluating
  one example with ``key=keys[b:b+1]`` gives the same value as the batch.
* `map_chunks`: evaluates ``num_samples`` perturbations ``batch_size`` at a time
  inside one `lax.map`, each chunk as one call of the model / explain function
  on ``batch_size * B`` inputs. Memory is bounded by ``batch_size``, never by
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
from rattr_jax.maps import _saliency
from rattr_jax.metrics import _similarity

NORMS = ("l2", "l1", "linf")
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
def check_explain(explain_fn: Any, x: jax.Array, t: jax.Array, *,
                  name: str = "explain_fn") -> None:
  """``explain_fn`` must be callable and return an array shaped like ``x``."""
  if not callable(explain_fn):
    raise ValueError(f"`{name}` must be a function explain(x, target) -> attribution; "
                     f"got {type(explain_fn).__name__}.")
  V.check_explain_output(explain_fn, x, t, name=name)


def prepare(x: Any, target: Any, fn: Callable | None = None) -> tuple[jax.Array, jax.Array]:
  """Validates ``x``, ``fn`` (if given) and ``target``."""
  x = V.check_batch(x)
  num_classes = None if fn is None else V.num_classes_of(fn, x)
  t = V.check_target(target, x.shape[0], num_classes)
  return x, t


def check_metric_key(key: Any, batch: int, *, name: str = "key") -> jax.Array:
  """Accepts one PRNG key or ``B`` keys (typed ``[B]`` or raw ``[B, 2]``)."""
  key = V.check_key(key, name=name)
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.shape not in ((), (batch,)):
    raise ValueError(f"`{name}` must be one PRNG key or a batch of B = {batch} keys; got "
                     f"key shape {tuple(key.shape)}.")
  return key


def check_flip(on_flip: str, fn: Callable | None) -> str:
  V.check_choice(on_flip, ON_FLIP, name="on_flip")
  if on_flip != "ignore" and fn is None:
    raise ValueError(f"`on_flip={on_flip!r}` needs the model `fn` to detect prediction "
                     "changes; pass fn=... or on_flip='ignore'.")
  return on_flip


def check_clip(clip: Any) -> tuple[float, float] | None:
  if clip is None:
    return None
  try:
    lo, hi = (float(c) for c in clip)
  except (TypeError, ValueError) as e:
    raise ValueError(f"`clip` must be None or a pair (low, high); got {clip!r}.") from e
  if not lo < hi:
    raise ValueError(f"`clip` must satisfy low < high; got {clip!r}.")
  return lo, hi


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
  V.check_choice(reduce, _saliency.REDUCTIONS, name="reduce")
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


def map_shape_of(shape: tuple[int, ...], reduce: str) -> tuple[int, ...]:
  if reduce != "none" and len(shape) == 4:
    return tuple(shape[:3])
  return tuple(shape)


def to_map(attr: jax.Array, reduce: str) -> jax.Array:
  return _saliency.reduce_channels(attr, reduce)


def similarity_of(similarity: str, a: jax.Array, b: jax.Array, k: int | None) -> jax.Array:
  fun, _, needs_k = SIMILARITIES[similarity]
  return fun(a, b, k) if needs_k else fun(a, b)


# ------------------------------------------------------------ inside jit ----
def example_keys(key: jax.Array, batch: int) -> jax.Array:
  """``[B]`` typed keys from one key (split) or ``B`` keys (as given)."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  return jax.random.split(key, batch) if key.ndim == 0 else key


def sample_noise(keys: jax.Array, idx: jax.Array, feat: tuple[int, ...], dtype,
                 epsilon: jax.Array, noise: str, ball: str = "linf") -> jax.Array:
  """Noise ``[S, B, *F]`` for sample indices ``idx [S]`` and example keys ``keys [B]``.

  * ``noise="uniform"``: uniform in the ``ball`` of radius ``epsilon``
    (``linf``: each feature ``U(-eps, eps)``; ``l2``: uniform in the L2 ball).
  * ``noise="gaussian"``: ``N(0, epsilon^2)`` per feature (unbounded).
  """
  d = int(np.prod(feat))

  def one(k):
    # One flat draw per key: XLA:CPU compiles a multi-dimensional (or vmapped)
    # threefry draw about 5x slower (~2 s) than a flat one inside `lax.map`.
    if noise == "gaussian":
      return jax.random.normal(k, (d,), dtype)
    if ball == "linf":
      return jax.random.uniform(k, (d,), dtype, -1.0, 1.0)
    k1, k2 = jax.random.split(k)
    g = jax.random.normal(k1, (d,), dtype)
    r = jax.random.uniform(k2, (), dtype) ** (1.0 / d)
    return r * g / jnp.linalg.norm(g)

  ks = jax.vmap(lambda s: jax.vmap(lambda k: jax.random.fold_in(k, s))(keys))(idx)  # [S, B]
  unit = jax.lax.map(one, ks.reshape(-1))
  return epsilon * unit.reshape(idx.shape + keys.shape + tuple(feat))


def map_chunks(f: Callable[[jax.Array], Any], n: int, batch_size: int | None) -> Any:
  """``f(idx [c]) -> pytree [c, ...]`` over ``idx = 0..n-1`` in chunks of ``batch_size``.

  Returns the pytree with leading axis ``n``. One chunk is evaluated directly;
  several run inside one `lax.map` (the last chunk is padded with extra
  indices whose results are dropped).
  """
  bs = n if batch_size is None else min(batch_size, n)
  num_chunks = -(-n // bs)
  idx = jnp.arange(num_chunks * bs, dtype=jnp.int32).reshape(num_chunks, bs)
  if num_chunks == 1:
    out = f(idx[0])
  else:
    out = jax.lax.map(f, idx)
    out = jax.tree_util.tree_map(lambda a: a.reshape((num_chunks * bs,) + a.shape[2:]), out)
  return jax.tree_util.tree_map(lambda a: a[:n], out)


def explain_many(explain_fn: Callable, xs: jax.Array, t: jax.Array) -> jax.Array:
  """Explains ``xs [S, B, *F]`` in one call on ``S * B`` inputs."""
  s, b = xs.shape[:2]
  flat = xs.reshape((s * b,) + xs.shape[2:])
  return explain_fn(flat, jnp.tile(t, s)).reshape(xs.shape)


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
