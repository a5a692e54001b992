"""Per-model evaluation units of a study: explain, attack, score, diagnose.

Each function takes one trained model and the study's evaluation images and
returns a dict of per-example numpy arrays (``name -> [N]``) plus, where it
applies, maps to save. Every random draw is keyed from the study seed, the
model's seed and the unit's name, so a unit recomputed after a kill gives the
same numbers.

This module is the only place where the study calls the library's
explainers, attacks and metrics.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rattr_jax import _random
from rattr_jax import attacks as A
from rattr_jax import attribution
from rattr_jax import curvature
from rattr_jax import distributed as dist
from rattr_jax import explainers
from rattr_jax import maps
from rattr_jax import metrics as M
from rattr_jax import regularizers

#: Whether a higher value is better (for robustness / faithfulness / sanity).
HIGHER_IS_BETTER = {
    "topk_intersection": True, "spearman": True, "pearson": True, "ssim": True, "cosine": True,
    "center_shift": False, "max_sensitivity": False, "local_lipschitz": False,
    "insertion": True, "deletion": False, "infidelity": False,
    "senn_faithfulness": True, "senn_stability": False, "random_map_insertion": True,
    "random_map_deletion": False,
    "parameter_randomization": False, "accuracy": True, "robust_accuracy": True,
    "train_time": False, "gradient_norm": False, "hessian_top_eig": False,
    "hessian_frobenius": False, "label_kept": True,
}

CHUNK = 64  # examples evaluated at once (memory bound)
MIN_CURVE_RANGE = 0.1  # probability change below which a normalised curve is undefined


def unit_key(*parts) -> jax.Array:
  """A PRNG key derived from strings and ints (stable across runs and processes)."""
  key = jax.random.key(0)
  for p in parts:
    key = jax.random.fold_in(key, zlib.crc32(str(p).encode()) & 0x7FFFFFFF)
  return key


# ------------------------------------------------------------------- execution
def mesh():
  """The study's device mesh: every device of every process (``None`` on one device)."""
  return _mesh_cached()


@functools.lru_cache(maxsize=None)
def _mesh_cached():
  return dist.data_mesh() if jax.device_count() > 1 else None


@functools.lru_cache(maxsize=None)
def _runner(f, batch_argnums, chunk_size=None):
  return dist.per_example(f, mesh(), batch_argnums=batch_argnums, chunk_size=chunk_size)


def example_chunk(spec) -> int | None:
  """Examples per device computed at once by the score stage's robustness metrics.

  ``None`` (all of a chunk's examples vectorised) for every explainer but DANCE. A
  DANCE map solves one decoy problem per patch; max-sensitivity regenerates the
  decoys at every noisy input, and vectorising that over 32 images held 20 GB on
  the mnist preset. DANCE examples are therefore mapped one at a time (the values
  do not depend on it, `rattr_jax.distributed.per_example`).
  """
  return 1 if spec.name == "decoy" else None


def per_example(f, *args, batch_argnums, key=None, example_chunk=None, **kwargs):
  """``f`` on each example, data-parallel over the mesh, in chunks of `CHUNK` examples.

  Example ``i`` gets ``fold_in(key, i)`` (``i`` its index in the evaluation set), so
  every value is the same whatever the chunking, the device count or the process
  count. Returns host numpy arrays (gathered on every process). ``example_chunk``:
  examples per device computed at once (`example_chunk`; ``None``: all of them).
  """
  run = _runner(f, batch_argnums, example_chunk)
  n = np.shape(args[batch_argnums[-1]])[0]
  outs = []
  for i, j in _chunks(n):
    a = [jax.tree_util.tree_map(lambda v: v[i:j], x) if k in batch_argnums else x
         for k, x in enumerate(args)]
    out = run(*a, key=key, index=np.arange(i, j, dtype=np.int32), **kwargs)
    outs.append(jax.tree_util.tree_map(np.asarray, dist.gather(out)))
  return jax.tree_util.tree_map(lambda *p: np.concatenate(p), *outs)


# ----------------------------------------------------------------- explainers
@functools.lru_cache(maxsize=None)
def explainer(name: str, params: tuple = ()):
  """The study's explainer for a spec: `rattr_jax.explainers.get` (hashable, cached)."""
  return explainers.get(name, **dict(params))


def model_explainer(spec, model):
  """The explainer of an `ExplainerSpec` for one model.

  Every explainer but DANCE is the same for every model (`explainer`). DANCE (``decoy``)
  binds the model's features at its layer (a pytree holding the weights, so models of
  one architecture share compiled programs); an unknown layer name is a ``ValueError``
  listing the model's layers.
  """
  if spec.name != "decoy":
    return explainer(spec.name, spec.params)
  from rattr_jax import models
  p = dict(spec.params)
  p.pop("num_examples", None)
  layer = p.pop("layer", None) or attribution.decoy_default_layer(model)
  names = list(models.layer_names(model))
  if layer not in names:
    raise ValueError(f"Unknown `explainers.decoy.layer` {layer!r} for {type(model).__name__}; "
                     f"expected one of {names}.")
  return explainers.get("decoy", layer=layer, model=model, **p)


def num_examples(spec, n: int) -> int:
  """How many of the ``n`` evaluation images an explainer explains (DANCE: a subset)."""
  return min(n, int(dict(spec.params).get("num_examples", n)))


def pad(values: dict, n: int) -> dict:
  """Per-example arrays of a subset padded with NaN to ``n`` examples."""
  out = {}
  for k, v in values.items():
    v = np.asarray(v, np.float64)
    full = np.full((n,) + v.shape[1:], np.nan)
    full[:len(v)] = v
    out[k] = full
  return out


def to_map(attr) -> jax.Array:
  return maps.saliency_map(attr, reduce="abs_sum", normalize="sum_to_one")


def _chunks(n: int):
  return [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def _attr(f, fn, x, t, *, key):
  return f(fn, x, t, key=key)


def attributions(fn, ex, x, t, *, key) -> np.ndarray:
  """Attributions of ``x`` shaped like ``x`` (per-example keys by index).

  The explainer is an argument (not the compiled function), so an explainer that holds
  arrays (DANCE's feature layer) is traced and one program serves every model."""
  return per_example(_attr, ex, fn, x, t, batch_argnums=(2, 3), key=key)


def explain(fn, ex, x, t, *, key) -> np.ndarray:
  """Saliency maps ``[N, H, W]`` of ``x``."""
  return np.asarray(to_map(attributions(fn, ex, x, t, key=key)))


# -------------------------------------------------------------------- similarity
def similarities(m0, m1, names, *, k: int) -> dict[str, np.ndarray]:
  a, b = jnp.asarray(m0), jnp.asarray(m1)
  fns = {"topk_intersection": lambda: M.topk_intersection(a, b, k=k),
         "spearman": lambda: M.spearman(a, b), "pearson": lambda: M.pearson(a, b),
         "ssim": lambda: M.ssim(a, b), "cosine": lambda: M.cosine_similarity(a, b),
         "center_shift": lambda: M.center_shift(a, b)}
  return {n: np.asarray(fns[n](), np.float64) for n in names}


# ------------------------------------------------------------------------ attacks
def _mask(shape) -> np.ndarray:
  """The targeted attack's region: the top-left quarter of the image (Ghorbani's
  targeted attack pulls the map into a chosen region)."""
  h, w = shape
  m = np.zeros((h, w), np.float32)
  m[: h // 4 + 1, : w // 4 + 1] = 1.0
  return m


def mass_center_random_start(name: str, surrogate) -> bool:
  """Whether the study's centre-of-mass attack starts from a random-sign corner.

  Its objective ``||C(I(x_adv)) - C(I(x))||^2`` is at its minimum at ``x_adv = x``,
  so its gradient there is exactly zero. Ghorbani et al. attack ReLU networks
  through a surrogate, whose map's centre differs from the real map's and gives a
  gradient; a smooth model attacked exactly would never leave ``x`` (signed step
  ``sign(0) = 0``). With a random start ``x`` is still scored first and kept if
  no iterate beats it.
  """
  return name == "mass_center" and surrogate is None


def attack(fn, surrogate, ex, x, t, *, name: str, epsilon: float, num_steps: int,
           step_size: float | None, k: int, select_on: str, key) -> np.ndarray:
  """Runs one attack on ``x`` and returns ``x_adv`` (label kept by construction).

  The centre-of-mass attack on a model attacked exactly (``surrogate=None``: smooth
  activations) starts from a random-sign corner of the ball (`mass_center_random_start`).
  """
  step = step_size if step_size is not None else 2.5 * epsilon / num_steps
  # The radius and step as numpy scalars: traced leaves of the config (a Python
  # float would be a static leaf), so one program serves every epsilon of the study.
  epsilon, step = np.float32(epsilon), np.float32(step)
  sel = select_on
  if name == "frame":
    cfg = A.frame_config(epsilon=epsilon, num_steps=num_steps, select_on=sel)
    res = per_example(A.frame_attack, fn, ex, x, t, batch_argnums=(2, 3), key=key, config=cfg,
                      surrogate=surrogate)
    return np.asarray(res.x_adv)
  cfg = A.AttackConfig(epsilon=epsilon, step_size=step, num_steps=num_steps, k=k,
                       select_on=sel,
                       random_start=mass_center_random_start(name, surrogate))
  kw = {}
  if name == "random_sign":
    f = A.random_sign_attack
  elif name == "topk":
    f = A.topk_attack
  elif name == "mass_center":
    f = A.mass_center_attack
  else:
    f = A.targeted_attack
    kw["mask"] = _mask(x.shape[1:3])
  res = per_example(f, fn, ex, x, t, batch_argnums=(2, 3), key=key, config=cfg,
                    surrogate=surrogate, **kw)
  return np.asarray(res.x_adv)


# ----------------------------------------------------------------------- metrics
def robustness(fn, ex, x, t, *, names, epsilon: float, num_samples: int, lipschitz_steps: int,
               key, example_chunk: int | None = None) -> dict[str, np.ndarray]:
  """Max-sensitivity (uniform noise in the L-inf box of radius ``epsilon``; relative L2
  change of the explanation) and the local
  Lipschitz estimate (projected gradient ascent in the L2 ball of radius
  ``epsilon * sqrt(d)``, the L2 radius of the same box's corners)."""
  out = {}
  if "max_sensitivity" in names:
    out["max_sensitivity"] = per_example(
        M.max_sensitivity, fn, ex, x, t, batch_argnums=(2, 3), key=jax.random.fold_in(key, 1),
        num_samples=num_samples, epsilon=epsilon, change_norm="l2", noise="uniform",
        input_range=(0.0, 1.0), example_chunk=example_chunk).astype(np.float64)
  if "local_lipschitz" in names:
    d = float(np.prod(x.shape[1:]))
    out["local_lipschitz"] = per_example(
        M.local_lipschitz_estimate, fn, ex, x, t, batch_argnums=(2, 3),
        key=jax.random.fold_in(key, 2), epsilon=float(epsilon * np.sqrt(d)),
        method="gradient_ascent", num_steps=lipschitz_steps,
        num_restarts=1, example_chunk=example_chunk).astype(np.float64)
  return out


def _normalized_curve(res) -> np.ndarray:
  """``(AUC - f(no information)) / (f(x) - f(no information))`` per example: the
  per-model normalisation of insertion/deletion (arXiv 2408.08137). NaN (left out of
  every mean and test) where the model's target probability changes by less than
  `MIN_CURVE_RANGE` between the two ends, where the ratio is meaningless."""
  curve = np.asarray(res.curve, np.float64)
  auc = np.asarray(res.auc, np.float64)
  first, last = curve[:, 0], curve[:, -1]
  lo, hi = np.where(first < last, first, last), np.where(first < last, last, first)
  den = hi - lo
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den >= MIN_CURVE_RANGE, (auc - lo) / np.where(den > 0, den, 1.0), np.nan)


def faithfulness(fn, attr, x, t, *, names, curve_steps: int, num_samples: int,
                 key) -> dict[str, np.ndarray]:
  """Insertion and deletion (normalised per model) and infidelity, of saved attributions."""
  out = {}
  pre = explainers.precomputed(np.asarray(attr, np.float32))
  if "insertion" in names:
    out["insertion"] = _normalized_curve(per_example(
        M.insertion, fn, pre, x, t, batch_argnums=(1, 2, 3), num_steps=curve_steps))
  if "deletion" in names:
    out["deletion"] = _normalized_curve(per_example(
        M.deletion, fn, pre, x, t, batch_argnums=(1, 2, 3), num_steps=curve_steps))
  if "infidelity" in names:
    out["infidelity"] = per_example(
        M.infidelity, fn, pre, x, t, batch_argnums=(1, 2, 3), key=key,
        num_samples=num_samples, normalize=True).astype(np.float64)
  return out


def _senn_stability(graphdef, state, x1, t1, *, key, epsilon, num_steps):
  from rattr_jax import senn as SN
  return SN.senn_stability(nnx.merge(graphdef, state), x1, key=key, target=t1, epsilon=epsilon,
                           denominator="input", num_steps=num_steps, num_restarts=1)


def senn_scores(model, x, t, *, names, epsilon: float, num_steps: int,
                key) -> dict[str, np.ndarray]:
  """A SENN's own explanation scores (Alvarez-Melis & Jaakkola 2018).

  ``senn_stability``: the local Lipschitz estimate of its relevances ``theta(x)`` over
  the input (projected gradient ascent in the L2 ball of radius ``epsilon``; lower is
  better). ``senn_faithfulness``: the correlation between each concept's relevance and
  the drop in the predicted probability when the concept is removed (higher is better).
  """
  from rattr_jax import senn as SN
  out = {}
  if "senn_stability" in names:
    # The weights are an argument (not closed over): one compile for every SENN of a shape.
    graphdef, state = nnx.split(model)
    out["senn_stability"] = per_example(
        _senn_stability, graphdef, state, x, t, batch_argnums=(2, 3), key=key,
        epsilon=float(epsilon), num_steps=int(num_steps)).astype(np.float64)
  if "senn_faithfulness" in names:
    out["senn_faithfulness"] = np.concatenate([
        np.asarray(SN.senn_faithfulness(model, jnp.asarray(x[i:j]), target=jnp.asarray(t[i:j])),
                   np.float64) for i, j in _chunks(len(x))])
  return out


def random_attribution(x, *, key) -> np.ndarray:
  """A random-map baseline attribution (uniform noise, shaped like ``x``)."""
  return np.asarray(_random.uniform(key, x.shape, jnp.float32))


# ------------------------------------------------------------------- diagnostics
# Model diagnostics are per-example computations too: data-parallel over the mesh, with
# keys folded by example index (the same values whatever the devices or processes).
def _correct(fn, x, y):
  return jnp.argmax(fn(x), -1) == y


def _pgd_correct(fn, x, y, *, key, epsilon: float, num_steps: int):
  x_adv = regularizers.pgd_adversary(fn, x, y, key=key, epsilon=epsilon,
                                     step_size=2.5 * epsilon / num_steps, num_steps=num_steps)
  return jnp.argmax(fn(x_adv), -1) == y


def _geometry(fn, x, t, *, key, iters: int, samples: int):
  g = attribution.gradient(fn, x, t)
  eigs = curvature.hessian_eigs(fn, x, t, k=1, num_iters=iters, key=key)
  fro = curvature.hessian_frobenius_norm(fn, x, t, key=jax.random.fold_in(key, 1),
                                         num_samples=samples)
  return {"gradient_norm": jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, -1)),
          "hessian_top_eig": jnp.abs(eigs.magnitude_eigenvalues[:, 0]),
          "hessian_frobenius": fro.estimate}


def _argmax(fn, x):
  return jnp.argmax(fn(x), -1)


def predictions(fn, x) -> np.ndarray:
  """Predicted classes ``[N]``."""
  return per_example(_argmax, fn, x, batch_argnums=(1,)).astype(np.int32)


def accuracy(fn, x, y) -> np.ndarray:
  """Per-example correctness (1.0 / 0.0)."""
  return per_example(_correct, fn, x, np.asarray(y, np.int32),
                     batch_argnums=(1, 2)).astype(np.float64)


def robust_accuracy(fn, x, y, *, epsilon: float, num_steps: int, restarts: int,
                    key) -> np.ndarray:
  """Per-example PGD robust correctness: L-inf PGD on the cross-entropy with
  ``restarts`` random starts of ``num_steps`` steps of ``2.5 epsilon / num_steps``;
  an example counts as robust if it is classified correctly and no restart flips it."""
  y = np.asarray(y, np.int32)
  ok = accuracy(fn, x, y) > 0
  for r in range(restarts):
    ok &= per_example(_pgd_correct, fn, x, y, batch_argnums=(1, 2),
                      key=jax.random.fold_in(key, r), epsilon=float(epsilon),
                      num_steps=int(num_steps)).astype(bool)
  return ok.astype(np.float64)


def geometry(fn, x, t, *, iters: int, samples: int, key) -> dict[str, np.ndarray]:
  """The input-gradient norm, the input Hessian's spectral norm (its largest |eigenvalue|,
  Lanczos) and the Hutchinson estimate of its Frobenius norm, of the target logit."""
  out = per_example(_geometry, fn, x, np.asarray(t, np.int32), batch_argnums=(1, 2), key=key,
                    iters=int(iters), samples=int(samples))
  return {k: np.asarray(v, np.float64) for k, v in out.items()}
