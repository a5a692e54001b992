"""The SENN evaluation protocol shared by ``rattr senn-report`` and ``benchmarks/senn_sweep.py``.

For each ``lambda``: train a SENN, then on ``num_eval`` test points measure
test accuracy, stability (the local Lipschitz estimate of the predicted
class's relevances against the concepts, and against the input), and
faithfulness (concept removal, Pearson with ``theta``). Post-hoc baselines:
the same input-space stability estimate for gradient, integrated gradients
and SmoothGrad maps of a black box trained with cross-entropy on the same data
(the zoo CNN for images, the zoo MLP for tabular data).

Stability estimator (the same for every explainer): the maximum of random
sampling (``num_samples`` uniform points in the L2 ball) and projected
gradient ascent (``num_restarts`` x ``num_steps``), both from
`rattr_jax.metrics`. Sampling matters for ReLU black boxes, whose gradient
maps are piecewise constant (the ascent then sees no signal from them). The
ball is L2 with radius ``epsilon = eps_per_feature * sqrt(d)`` (RMS change
``eps_per_feature`` per feature) and clipped to the data range [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax.senn._faithfulness import senn_faithfulness
from rattr_jax.senn._stability import senn_stability
from rattr_jax.senn._train import SENNConfig, concept_statistics, fit_senn

POSTHOC = ("gradient", "integrated_gradients", "smoothgrad")
#: A concept whose test-set variance is at most this is reported as dead (constant).
DEAD_VARIANCE = 1e-8


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """Evaluation settings (stated in every report).

  Attributes:
    num_eval: test points evaluated (the first ones of the test split).
    eps_per_feature: RMS perturbation per feature; the L2 radius is
      ``eps_per_feature * sqrt(d)``.
    num_samples: random points of the sampling estimator.
    num_steps, num_restarts: projected gradient ascent.
    ig_steps: integrated-gradients path points (post-hoc).
    sg_samples: SmoothGrad samples (post-hoc; noise 0.15 of the input range).
    batch_size: samples / restarts evaluated per call.
  """

  num_eval: int = 100
  eps_per_feature: float = 0.05
  num_samples: int = 32
  num_steps: int = 10
  num_restarts: int = 2
  ig_steps: int = 16
  sg_samples: int = 16
  batch_size: int | None = 8

  def epsilon(self, input_shape) -> float:
    return float(self.eps_per_feature * math.sqrt(math.prod(input_shape)))


def _max_estimate(run: Callable[..., jax.Array], s: EvalSettings, key) -> np.ndarray:
  k1, k2 = jax.random.split(key)
  a = run(method="sampling", num_samples=s.num_samples, key=k1)
  b = run(method="gradient_ascent", num_steps=s.num_steps, num_restarts=s.num_restarts, key=k2)
  return np.maximum(np.asarray(a), np.asarray(b))


def _summary(v: np.ndarray) -> dict[str, float]:
  v = np.asarray(v, float)
  ok = v[np.isfinite(v)]
  if not len(ok):
    return {"mean": float("nan"), "median": float("nan"), "q25": float("nan"),
            "q75": float("nan"), "n": 0}
  return {"mean": float(ok.mean()), "median": float(np.median(ok)),
          "q25": float(np.quantile(ok, 0.25)), "q75": float(np.quantile(ok, 0.75)),
          "n": int(len(ok))}


def evaluate_senn(model, data, settings: EvalSettings, *, key) -> dict[str, Any]:
  """Accuracy, stability (vs concepts and vs input), faithfulness and concept stats."""
  x = jnp.asarray(data.x_test[:settings.num_eval])
  eps = settings.epsilon(data.input_shape)
  out: dict[str, Any] = {}
  t0 = time.perf_counter()
  stats = concept_statistics(model, data.x_test, data.y_test)
  out["test_accuracy"] = stats["accuracy"]
  out["reconstruction"] = stats["reconstruction"]
  out["concept_variance"] = np.asarray(stats["concept_variance"]).tolist()
  out["dead_concepts"] = dead_concepts(stats["concept_variance"])
  k1, k2 = jax.random.split(key)
  for name, den, k in (("stability", "concepts", k1), ("stability_vs_input", "input", k2)):
    run = functools.partial(senn_stability, model, x, epsilon=eps, denominator=den,
                            chunk_size=settings.batch_size)
    v = _max_estimate(run, settings, k)
    out[name] = _summary(v)
  f = np.asarray(senn_faithfulness(model, x))
  out["faithfulness"] = _summary(f)
  out["eval_seconds"] = time.perf_counter() - t0
  return out


def _with_fixed_key(ex, fixed_key, f, z, tt, *, key=None):
  """``ex`` with one fixed key (common random numbers), whatever key the metric passes."""
  del key
  return ex(f, z, tt, key=fixed_key)


def posthoc_explainers(settings: EvalSettings, *, key) -> dict[str, Callable]:
  """Explainers ``explainer(fn, x, target, *, key)`` of the post-hoc baselines.

  SmoothGrad uses the one noise ``key`` at ``x`` and at every perturbed
  ``x'`` (common random numbers), so the stability estimate measures the
  explanation's change, not fresh sampling noise.
  """
  from rattr_jax import explainers
  sg = explainers.get("smoothgrad", num_samples=settings.sg_samples)
  return {
      "gradient": explainers.get("gradient"),
      "integrated_gradients": explainers.get("integrated_gradients",
                                             num_steps=settings.ig_steps),
      "smoothgrad": jax.tree_util.Partial(_with_fixed_key, sg, key),
  }


def dead_concepts(concept_variance) -> list[int]:
  """Indices of concepts whose variance over the test set is at most `DEAD_VARIANCE`."""
  v = np.asarray(concept_variance, float)
  return [int(i) for i in np.flatnonzero(~(v > DEAD_VARIANCE))]


def evaluate_posthoc(fn, data, settings: EvalSettings, *, key,
                     methods: Sequence[str] = POSTHOC,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Input-space stability of post-hoc maps of a black box ``fn`` on the same points.

  ``progress(name)`` is called after each method's estimate.
  """
  from rattr_jax.metrics import local_lipschitz_estimate
  x = jnp.asarray(data.x_test[:settings.num_eval])
  t = jnp.argmax(fn(x), -1).astype(jnp.int32)
  eps = settings.epsilon(data.input_shape)
  kx, ke = jax.random.split(key)
  table = posthoc_explainers(settings, key=kx)
  out = {}
  for i, name in enumerate(methods):
    t0 = time.perf_counter()
    run = functools.partial(local_lipschitz_estimate, fn, table[name], x, t, epsilon=eps,
                            input_range=(0.0, 1.0), chunk_size=settings.batch_size)
    v = _max_estimate(run, settings, jax.random.fold_in(ke, i))
    out[name] = dict(_summary(v), seconds=time.perf_counter() - t0)
    if progress is not None:
      progress(name)
  return out


def train_blackbox(data, *, epochs: int, seed: int = 0):
  """The CE-trained black box: zoo ``cnn`` for 28x28 images, ``lenet`` for 32x32, else ``mlp``."""
  from rattr_jax import models
  from rattr_jax._quicktrain import accuracy, fit
  shape = data.input_shape
  name = "mlp" if len(shape) == 1 else ("cnn" if shape[0] == 28 else "lenet")
  m = models.create_model(name, input_shape=shape, num_classes=data.num_classes, seed=seed)
  bs = 64 if len(data.x_train) >= 2000 else 32
  m = fit(m, data.x_train, data.y_train, epochs=epochs, batch_size=bs, seed=seed)
  fn = models.as_fn(m)
  return name, fn, accuracy(fn, data.x_test, data.y_test)


def sweep(data, base: SENNConfig, lambdas: Sequence[float], settings: EvalSettings, *,
          key, progress: Callable[[str, int, dict], None] | None = None,
          keep_models: bool = False,
          on_evaluated: Callable[[str, float], None] | None = None) -> dict[str, Any]:
  """Trains and evaluates one SENN per ``lambda`` (same seed and data for all).

  ``progress(run, epoch, record)`` is called after each training epoch and
  ``on_evaluated(run, seconds)`` after each model's evaluation.

  Returns:
    ``{"runs": [{"lambda", "train_seconds", "history", **evaluate_senn}],
    "models": {lambda: model}}`` (models only with ``keep_models``).
  """
  runs, kept = [], {}
  for i, lam in enumerate(lambdas):
    cfg = base.replace(lambda_robustness=float(lam))
    model = cfg.build(data.input_shape, data.num_classes)
    t0 = time.perf_counter()
    cb = None if progress is None else functools.partial(progress, f"lambda={lam:g}")
    model, hist = fit_senn(model, data.x_train, data.y_train, cfg, x_val=data.x_test,
                           y_val=data.y_test, progress=cb)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = evaluate_senn(model, data, settings, key=jax.random.fold_in(key, i))
    if on_evaluated is not None:
      on_evaluated(f"lambda={lam:g}", time.perf_counter() - t1)
    runs.append(dict(**{"lambda": float(lam), "train_seconds": train_s,
                        "history": hist.as_dict()}, **res))
    if keep_models:
      kept[float(lam)] = model
  return {"runs": runs, "models": kept}
