"""Relative input, output and representation stability (Agarwal et al., 2022).

For a perturbation ``x'`` of ``x`` that keeps the predicted class, with
``e = Phi(x)``, ``e' = Phi(x')`` and element-wise relative changes
``r(a, a') = (a - a') / a`` (a zero ``a`` is replaced by ``eps_min``):

* RIS: ``||r(e, e')||_p / max(||r(x, x')||_p, eps_min)``
* ROS: ``||r(e, e')||_p / max(||h(x) - h(x')||_p, eps_min)``, ``h`` the logits
* RRS: ``||r(e, e')||_p / max(||r(L(x), L(x'))||_p, eps_min)``, ``L`` an
  internal representation.

Each metric is the maximum over ``num_samples`` perturbations.

Differences from Quantus 0.6 (which we otherwise follow, ``eps_min = 1e-6``):

* Quantus's default noise is ``U(0.02, 0.2)``: one-sided and not centred on
  ``x``, because it passes ``upper_bound=0.2`` to a uniform sampler whose
  ``lower_bound`` defaults to 0.02. We use ``U(-epsilon, epsilon)``, with
  ``epsilon = 0.02`` as in our other robustness metrics.
* Quantus guards the denominator with ``+ eps_min`` only when it is exactly
  zero; we use the paper's ``max(., eps_min)``. The two differ only when the
  norm lies in ``(0, eps_min)``.
* Quantus returns NaN for an example as soon as one sample changes the
  prediction (``on_flip="nan"``). The paper's maximum runs over the
  perturbations that keep the prediction, which is our default
  (``on_flip="exclude"``; NaN only if every sample changes it).

Inputs at exactly zero (e.g. MNIST's background) make ``r(x, x')`` huge,
``(x - x') / 1e-6``, and RIS correspondingly small. This is the definition,
shared with Quantus; use ROS or RRS for such data.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax import core
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax.metrics import _common as C

KINDS = ("input", "output", "representation")


def _relative(a, a_pert, eps_min):
  """Element-wise ``(a - a') / a`` with zeros of ``a`` replaced by ``eps_min``."""
  return (a - a_pert) / jnp.where(a == 0, jnp.asarray(eps_min, a.dtype), a)


@jit_with_callables(callables=("fn", "explainer", "representation_fn"),
                    static_argnames=("with_representation", "num_samples", "change_norm", "noise",
                                     "on_flip", "input_range", "chunk_size"))
def _relative_stability(fn, explainer, representation_fn, x, t, key, epsilon, eps_min,
                        with_representation, num_samples, change_norm, noise, on_flip, input_range,
                        chunk_size):
  """``[K, B]``: RIS, ROS (and RRS with a representation) from the same perturbations."""
  bsz, feat = x.shape[0], x.shape[1:]
  keys = C.example_keys(key, bsz)
  e0 = explainer(fn, x, t, key=core.call_key(key, 0))
  logits0 = fn(x)
  pred0 = jnp.argmax(logits0, axis=-1)
  rep0 = representation_fn(x) if with_representation else None

  def chunk(idx):
    xs = C.clip_to(x[None] + C.sample_noise(keys, idx, feat, x.dtype, epsilon, noise),
                   input_range)
    es = C.explain_many(explainer, fn, xs, t, core.call_key(key, 1 + idx[0]))
    num = C.flat_norm(_relative(e0[None], es, eps_min), change_norm, batch_dims=2)
    logits = C.logits_many(fn, xs)
    dens = [C.flat_norm(_relative(x[None], xs, eps_min), change_norm, batch_dims=2),
            C.flat_norm(logits0[None] - logits, change_norm, batch_dims=2)]
    if with_representation:
      reps = C.logits_many(representation_fn, xs)
      dens.append(C.flat_norm(_relative(rep0[None], reps, eps_min), change_norm, batch_dims=2))
    vals = jnp.stack([num / jnp.maximum(den, eps_min) for den in dens], axis=1)  # [c, K, B]
    return vals, jnp.argmax(logits, axis=-1) == pred0[None]

  vals, valid = C.map_chunks(chunk, num_samples, chunk_size)
  return jnp.stack([C.reduce_samples(vals[:, i], valid, on_flip, "max")
                    for i in range(vals.shape[1])])


def _run(kind, fn, explainer, x, target, key, num_samples, epsilon, eps_min, change_norm, noise,
         on_flip, input_range, chunk_size, representation_fn=None):
  V.check_key(key)
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=True,
                                        what=f"relative_{kind}_stability")
  if kind == "representation":
    if not callable(representation_fn):
      raise ValueError("`representation_fn` must be a function x [B, *F] -> [B, ...]; got "
                       f"{type(representation_fn).__name__}.")
    try:
      out = jax.eval_shape(representation_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception as e:
      raise ValueError(f"`representation_fn` failed on x of shape {tuple(x.shape)}: {e}") from e
    if not hasattr(out, "shape") or len(out.shape) < 2 or out.shape[0] != x.shape[0]:
      raise ValueError("`representation_fn` must return a batch [B, ...]; got "
                       f"{getattr(out, 'shape', type(out))}.")
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  V.check_positive(epsilon, name="epsilon")
  V.check_positive(eps_min, name="eps_min")
  V.check_choice(change_norm, C.CHANGE_NORMS, name="change_norm")
  V.check_choice(noise, C.NOISES, name="noise")
  V.check_choice(on_flip, C.ON_FLIP, name="on_flip")
  input_range = C.check_range(input_range)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  out = _relative_stability(fn, explainer,
                            representation_fn if kind == "representation" else None,
                            x, t, key, jnp.asarray(epsilon, x.dtype),
                            jnp.asarray(eps_min, x.dtype), kind == "representation", num_samples,
                            change_norm, noise, on_flip, input_range, chunk_size)
  return out[KINDS.index(kind)]


_ARGS_DOC = """
  Args:
    fn: the model ``[B, *F] -> [B, C]`` (detects prediction changes; ROS uses
      its logits).
    explainer: ``explainer(fn, x, target, *, key) -> attribution`` shaped like
      ``x``, treating examples independently (`rattr_jax.explainers`).
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: one PRNG key or ``B`` keys (one per example).
    num_samples: number of perturbations.
    epsilon: noise radius (``U(-epsilon, epsilon)``) or standard deviation
      (``noise="gaussian"``).
    eps_min: the floor ``eps_min`` of the paper (and Quantus), 1e-6.
    change_norm: ``"l2"`` (the paper's p = 2), ``"l1"`` or ``"linf"``.
    noise: ``"uniform"`` or ``"gaussian"``.
    on_flip: ``"exclude"`` (default, the paper), ``"nan"`` (Quantus) or
      ``"ignore"``.
    input_range: optional valid box ``(lo, hi)`` for ``x'``.
    chunk_size: perturbations per explainer call; ``None``: all.

  Returns:
    ``[B]`` values; NaN where the flip policy leaves no perturbation.

  References:
    Agarwal, Johnson, Pawelczyk, Krishna, Saxena, Zitnik, Lakkaraju,
    "Rethinking Stability for Attribution-based Explanations", 2022.
    https://arxiv.org/abs/2203.06877
"""


def relative_input_stability(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                             target: Target, *, key: PRNGKey, num_samples: int = 50,
                             epsilon: float = 0.02, eps_min: float = 1e-6, change_norm: str = "l2",
                             noise: str = "uniform", on_flip: str = "exclude",
                             input_range=None,
                             chunk_size: int | None = None) -> Float[Array, "B"]:
  return _run("input", fn, explainer, x, target, key, num_samples, epsilon, eps_min, change_norm,
              noise, on_flip, input_range, chunk_size)


def relative_output_stability(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                              target: Target, *, key: PRNGKey, num_samples: int = 50,
                              epsilon: float = 0.02, eps_min: float = 1e-6, change_norm: str = "l2",
                              noise: str = "uniform", on_flip: str = "exclude",
                              input_range=None,
                              chunk_size: int | None = None) -> Float[Array, "B"]:
  return _run("output", fn, explainer, x, target, key, num_samples, epsilon, eps_min, change_norm,
              noise, on_flip, input_range, chunk_size)


def relative_representation_stability(fn: Callable, explainer: Explainer,
                                      x: Float[Array, "B ..."], target: Target, *,
                                      representation_fn: Callable, key: PRNGKey,
                                      num_samples: int = 50, epsilon: float = 0.02,
                                      eps_min: float = 1e-6, change_norm: str = "l2",
                                      noise: str = "uniform", on_flip: str = "exclude",
                                      input_range=None,
                                      chunk_size: int | None = None) -> Float[Array, "B"]:
  return _run("representation", fn, explainer, x, target, key, num_samples, epsilon, eps_min,
              change_norm, noise, on_flip, input_range, chunk_size,
              representation_fn=representation_fn)


relative_input_stability.__doc__ = """Relative input stability (RIS).

  ``RIS(x) = max_{x'} ||(e - e') / e||_p / max(||(x - x') / x||_p, eps_min)``
  over perturbations ``x'`` that keep the prediction (see the module docstring
  for the conventions and how they differ from Quantus). **Lower is better.**
""" + _ARGS_DOC

relative_output_stability.__doc__ = """Relative output stability (ROS).

  ``ROS(x) = max_{x'} ||(e - e') / e||_p / max(||h(x) - h(x')||_p, eps_min)``
  with ``h = fn`` the logits. **Lower is better.**
""" + _ARGS_DOC

relative_representation_stability.__doc__ = """Relative representation stability (RRS).

  ``RRS(x) = max_{x'} ||(e - e') / e||_p / max(||(L(x) - L(x')) / L(x)||_p, eps_min)``
  with ``L = representation_fn`` an internal representation, e.g.
  ``rattr_jax.models.feature_fn(model, "fc1")``. **Lower is better.**
""" + _ARGS_DOC.replace(
    "    x: inputs ``[B, *F]``.\n",
    "    x: inputs ``[B, *F]``.\n    representation_fn: ``x [B, *F] -> L(x) [B, ...]``, treating "
    "examples\n      independently.\n")
