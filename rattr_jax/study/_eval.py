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

from rattr_jax import attacks as A
from rattr_jax import attribution
from rattr_jax import curvature
from rattr_jax import explainers
from rattr_jax import maps
from rattr_jax import metrics as M
from rattr_jax import regularizers

#: Whether a higher value is better (for robustness / faithfulness / sanity).
HIGHER_IS_BETTER = {
    "topk_intersection": True, "spearman": True, "pearson": True, "ssim": True, "cosine": True,
    "center_shift": False, "max_sensitivity": False, "local_lipschitz": False,
    "insertion": True, "deletion": False, "infidelity": False,
    "senn_faithfulness": True, "random_map_insertion": True, "random_map_deletion": False,
    "parameter_randomization": False, "accuracy": True, "robust_accuracy": True,
    "train_time": False, "gradient_norm": False, "hessian_top_eig": False,
    "hessian_frobenius": False, "label_kept": True,
}

CHUNK = 64  # examples evaluated at once (memory bound)


def unit_key(*parts) -> jax.Array:
  """A PRNG key derived from strings and ints (stable across runs and processes)."""
  key = jax.random.key(0)
  for p in parts:
    key = jax.random.fold_in(key, zlib.crc32(str(p).encode()) & 0x7FFFFFFF)
  return key


# ----------------------------------------------------------------- explainers
def _gradient(f, x, t, *, key=None):
  del key
  return attribution.gradient(f, x, t)


def _input_x_gradient(f, x, t, *, key=None):
  del key
  return attribution.input_x_gradient(f, x, t)


def _ig(f, x, t, *, key=None, num_steps=16, method="riemann_trapezoid"):
  del key
  return attribution.integrated_gradients(f, x, t, num_steps=num_steps, method=method)


def _smoothgrad(f, x, t, *, key, num_samples=16, stddev=0.15):
  return attribution.smoothgrad(f, x, t, key=key, num_samples=num_samples, stddev=stddev)


_BUILDERS = {"gradient": _gradient, "input_x_gradient": _input_x_gradient,
             "integrated_gradients": _ig, "smoothgrad": _smoothgrad}


@functools.lru_cache(maxsize=None)
def explainer(name: str, params: tuple = ()):
  """The study's explainer ``explainer(fn, x, target, *, key)`` for a spec (cached, so one
  object per spec and one compiled program per shape)."""
  base = _BUILDERS[name]
  return functools.partial(base, **dict(params)) if params else base


def to_map(attr) -> jax.Array:
  return maps.saliency_map(attr, reduce="abs_sum", normalize="sum_to_one")


def _chunks(n: int, size: int = CHUNK):
  return [(i, min(i + size, n)) for i in range(0, n, size)]


def explain(fn, ex, x, t, *, key) -> np.ndarray:
  """Saliency maps ``[N, H, W]`` of ``x`` (chunked; per-example keys by index)."""
  out = []
  for i, j in _chunks(len(x)):
    out.append(np.asarray(to_map(ex(fn, jnp.asarray(x[i:j]), jnp.asarray(t[i:j]),
                                    key=jax.random.fold_in(key, i)))))
  return np.concatenate(out)


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


def attack(fn, surrogate, ex, x, t, *, name: str, epsilon: float, num_steps: int,
           step_size: float | None, k: int, select_on: str, key) -> np.ndarray:
  """Runs one attack on ``x`` and returns ``x_adv`` (label kept by construction)."""
  xj, tj = jnp.asarray(x), jnp.asarray(t)
  step = step_size if step_size is not None else 2.5 * epsilon / num_steps
  sel = "model" if select_on == "measure" else select_on
  if select_on == "measure" and "measure" in getattr(A, "SELECT_ON", ()):
    sel = "measure"
  if name == "frame":
    cfg = A.frame_config(epsilon=epsilon, num_steps=num_steps, select_on=sel)
    res = A.frame_attack(fn, ex, xj, tj, key=key, config=cfg, surrogate=surrogate)
    return np.asarray(res.x_adv)
  cfg = A.AttackConfig(epsilon=epsilon, step_size=step, num_steps=num_steps, k=k,
                       select_on=sel)
  if name == "random_sign":
    res = A.random_sign_attack(fn, ex, xj, tj, key=key, config=cfg, surrogate=surrogate)
  elif name == "topk":
    res = A.topk_attack(fn, ex, xj, tj, key=key, config=cfg, surrogate=surrogate)
  elif name == "mass_center":
    res = A.mass_center_attack(fn, ex, xj, tj, key=key, config=cfg, surrogate=surrogate)
  else:
    res = A.targeted_attack(fn, ex, xj, tj, key=key, mask=jnp.asarray(_mask(x.shape[1:3])),
                            config=cfg, surrogate=surrogate)
  return np.asarray(res.x_adv)


# ----------------------------------------------------------------------- metrics
def _with_fixed_key(ex, fixed_key, f, z, tt, *, key=None):
  """``ex`` with one fixed key (common random numbers), whatever key the metric passes."""
  del key
  return ex(f, z, tt, key=fixed_key)


def robustness(fn, ex, x, t, *, names, epsilon: float, num_samples: int, lipschitz_steps: int,
               key) -> dict[str, np.ndarray]:
  """Max-sensitivity (L-inf uniform noise of radius ``epsilon``) and the local
  Lipschitz estimate (projected gradient ascent in the L2 ball of radius
  ``epsilon * sqrt(d)``, the L2 radius of the same L-inf box's corners)."""
  out = {}
  xj, tj = jnp.asarray(x), jnp.asarray(t)
  # A stochastic explainer (SmoothGrad) uses the same noise key at x and at every
  # perturbed x' (common random numbers), so the metric sees the explanation's change,
  # not fresh sampling noise.
  k_ex = jax.random.fold_in(key, 3)
  bound = jax.tree_util.Partial(_with_fixed_key, ex, k_ex)
  if "max_sensitivity" in names:
    out["max_sensitivity"] = np.asarray(M.max_sensitivity(
        fn, bound, xj, tj, key=jax.random.fold_in(key, 1), num_samples=num_samples,
        epsilon=epsilon, norm="l2", noise="uniform", input_range=(0.0, 1.0)), np.float64)
  if "local_lipschitz" in names:
    d = float(np.prod(x.shape[1:]))
    out["local_lipschitz"] = np.asarray(M.local_lipschitz_estimate(
        fn, bound, xj, tj, key=jax.random.fold_in(key, 2), epsilon=epsilon * np.sqrt(d),
        method="gradient_ascent", num_steps=lipschitz_steps, num_restarts=1), np.float64)
  return out


def _normalized_curve(res) -> np.ndarray:
  """``(AUC - f(no information)) / (f(x) - f(no information))`` per example: the
  per-model normalisation of insertion/deletion (arXiv 2408.08137). NaN where the
  model's output does not change between the two ends (|denominator| < 1e-3)."""
  curve = np.asarray(res.curve, np.float64)
  auc = np.asarray(res.auc, np.float64)
  first, last = curve[:, 0], curve[:, -1]
  lo, hi = np.where(first < last, first, last), np.where(first < last, last, first)
  den = hi - lo
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 1e-3, (auc - lo) / np.where(den > 0, den, 1.0), np.nan)


def faithfulness(fn, attr, x, t, *, names, curve_steps: int, num_samples: int,
                 key) -> dict[str, np.ndarray]:
  """Insertion and deletion (normalised per model) and infidelity, of saved attributions."""
  out = {}
  xj, tj, aj = jnp.asarray(x), jnp.asarray(t), explainers.precomputed(jnp.asarray(attr))
  if "insertion" in names:
    out["insertion"] = _normalized_curve(M.insertion(fn, aj, xj, tj, num_steps=curve_steps))
  if "deletion" in names:
    out["deletion"] = _normalized_curve(M.deletion(fn, aj, xj, tj, num_steps=curve_steps))
  if "infidelity" in names:
    out["infidelity"] = np.asarray(M.infidelity(fn, aj, xj, tj, key=key,
                                                num_samples=num_samples, normalize=True),
                                   np.float64)
  return out


def random_attribution(x, *, key) -> np.ndarray:
  """A random-map baseline attribution (uniform noise, shaped like ``x``)."""
  return np.asarray(jax.random.uniform(key, x.shape, jnp.float32))


# ------------------------------------------------------------------- diagnostics
def accuracy(fn, x, y) -> np.ndarray:
  jf = jax.jit(fn)
  out = [np.asarray(jnp.argmax(jf(jnp.asarray(x[i:j])), -1) == jnp.asarray(y[i:j]))
         for i, j in _chunks(len(x), 500)]
  return np.concatenate(out).astype(np.float64)


def robust_accuracy(fn, x, y, *, epsilon: float, num_steps: int, restarts: int,
                    key) -> np.ndarray:
  """Per-example PGD robust correctness: L-inf PGD on the cross-entropy with
  ``restarts`` random starts of ``num_steps`` steps of ``2.5 epsilon / num_steps``;
  an example counts as robust if no restart flips it."""
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  ok = np.array(jnp.argmax(fn(xj), -1) == yj)
  for r in range(restarts):
    x_adv = regularizers.pgd_adversary(fn, xj, yj, key=jax.random.fold_in(key, r),
                                       epsilon=epsilon, step_size=2.5 * epsilon / num_steps,
                                       num_steps=num_steps)
    ok &= np.asarray(jnp.argmax(fn(x_adv), -1) == yj)
  return ok.astype(np.float64)


def geometry(fn, x, t, *, iters: int, samples: int, key) -> dict[str, np.ndarray]:
  """Mean input-gradient norm, the top input-Hessian eigenvalue (Lanczos) and the
  Hutchinson estimate of the Hessian's Frobenius norm, of the target logit."""
  xj, tj = jnp.asarray(x), jnp.asarray(t)
  g = attribution.gradient(fn, xj, tj)
  out = {"gradient_norm": np.asarray(jnp.sqrt(jnp.sum(g.reshape(len(x), -1) ** 2, -1)),
                                     np.float64)}
  eigs = curvature.hessian_eigs(fn, xj, tj, k=1, num_iters=iters, key=key)
  out["hessian_top_eig"] = np.asarray(eigs.magnitude_eigenvalues[:, 0], np.float64)
  fro = curvature.hessian_frobenius_norm(fn, xj, tj, key=jax.random.fold_in(key, 1),
                                         num_samples=samples)
  out["hessian_frobenius"] = np.asarray(fro.estimate, np.float64)
  return out
