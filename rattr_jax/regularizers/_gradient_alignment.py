"""Local explanation alignment (Joo et al., AAAI 2023): l2 + cosine between E(x) and E(x + delta).

``E`` is any differentiable explainer (`rattr_jax.explainers`); the paper's
(and training's default) is the gradient of the true-class logit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax import core
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax.core import Explainer
from rattr_jax.regularizers import _common

PERTURBATIONS = ("uniform", "gaussian", "grad_sign")


@struct.dataclass
class AlignmentTerms:
  """Per-example parts of the alignment regularizer.

  Attributes:
    l2: ``[B]`` squared distance ``||E(x) - E(x + delta)||^2``.
    cosd: ``[B]`` cosine distance ``(1 - cos(E(x), E(x + delta))) / 2`` in [0, 1].
  """

  l2: jax.Array
  cosd: jax.Array


def _cosine(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Per-example cosine similarity of flattened vectors (torch's eps convention)."""
  a = a.reshape(a.shape[0], -1)
  b = b.reshape(b.shape[0], -1)
  na = jnp.maximum(jnp.linalg.norm(a, axis=1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=1), eps)
  return jnp.sum(a * b, axis=1) / (na * nb)


def _explain(explainer, fn, z, t, key):
  if explainer is None:  # the gradient without the public function's trace-time checks
    return core.target_gradient(fn, z, t)
  return explainer(fn, z, t, key=key)


def alignment_terms(fn: Callable, x: jax.Array, t: jax.Array, *, key: jax.Array,
                    epsilon: jax.Array, perturbation: str = "uniform",
                    stop_gradient_source: bool = True,
                    explainer: Explainer | None = None) -> AlignmentTerms:
  """Core of `gradient_alignment` (call inside a traced loss; arguments already checked).

  ``explainer=None`` is the gradient of the target logit. The explainer gets
  the same key (`rattr_jax.core.call_key(key, 0)`) at ``x`` and at
  ``x + delta``: common random numbers, so a SmoothGrad term measures the
  explanation's change and not its sampling noise.
  """
  k_ex = core.call_key(key, 0)
  g_src = _explain(explainer, fn, x, t, k_ex)
  if perturbation == "grad_sign":
    delta = epsilon * jnp.sign(jax.lax.stop_gradient(g_src))
  elif perturbation == "uniform":
    delta = core.ThreatModel(epsilon=epsilon, norm="linf").sample_delta(key, x.shape, x.dtype)
  else:
    delta = _common.random_delta(key, x.shape, x.dtype, epsilon, perturbation)
  x_pert = jax.lax.stop_gradient(x + delta)
  if stop_gradient_source:
    g_src = jax.lax.stop_gradient(g_src)
  g_pert = _explain(explainer, fn, x_pert, t, k_ex)
  diff = (g_src - g_pert).reshape(x.shape[0], -1)
  l2 = jnp.sum(diff * diff, axis=1)
  cosd = 0.5 * (1.0 - _cosine(g_src, g_pert))
  return AlignmentTerms(l2, cosd)


@jit_with_callables(callables=("fn", "explainer"),
                    static_argnames=("perturbation", "stop_gradient_source", "reduction"))
def _gradient_alignment(fn, explainer, x, t, key, epsilon, lambda_l2, lambda_cos, perturbation,
                        stop_gradient_source, reduction):
  terms = alignment_terms(fn, x, t, key=key, epsilon=epsilon, perturbation=perturbation,
                          stop_gradient_source=stop_gradient_source, explainer=explainer)
  return _common.reduce(lambda_l2 * terms.l2 + lambda_cos * terms.cosd, reduction)


def gradient_alignment(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                       target: Target, *, key: jax.Array, epsilon: Any = 4 / 255,
                       lambda_l2: Any = 0.01, lambda_cos: Any = 1.0,
                       perturbation: str = "uniform", stop_gradient_source: bool = True,
                       reduction: str = "mean") -> jax.Array:
  """Local explanation-alignment regularizer (AGA) of Joo et al.

  ``R(x) = lambda_l2 * ||g(x) - g(x + delta)||^2
  + lambda_cos * (1 - cos(g(x), g(x + delta))) / 2``, where ``g = explainer(fn, ., target)``,
  in the paper (and `rattr_jax.attribution.gradient`, the training default)
  the input gradient of the true-class *logit* (not the loss); any
  differentiable explainer works (integrated gradients, SmoothGrad, ...). One
  ``delta`` is drawn per example and call:

  * ``"uniform"`` (reference default): ``delta ~ epsilon * U[-1, 1]^d``;
  * ``"gaussian"``: ``delta ~ epsilon * N(0, I)``;
  * ``"grad_sign"``: ``delta = epsilon * sign(g(x))``, the corner of the
    l-inf ball of radius ``epsilon`` along the gradient sign. (The reference
    code instead rescales ``sign(g)`` to l2 norm ``epsilon``.)

  As in the reference code, ``x + delta`` is not clipped to the data range and
  is treated as a constant, and with ``stop_gradient_source=True`` so is
  ``g(x)``; parameter gradients then flow only through ``g(x + delta)`` (a
  double backward when this is differentiated with `jax.grad` through a
  closure ``fn = lambda x: apply(params, x)``). With ``epsilon = 0`` the value
  and its parameter gradient are exactly zero.

  Lower is better (more locally aligned explanations). The cosine part is
  invariant to rescaling the logits, the l2 part is not.

  Args:
    fn: model, ``[B, *F] -> [B, C]`` logits. Examples must not interact
      (BatchNorm with fixed statistics) for ``g`` to be per-example.
    explainer: a differentiable explainer ``explainer(fn, x, target, *, key)``,
      e.g. `rattr_jax.attribution.gradient` (the paper) or
      ``rattr_jax.explainers.get("integrated_gradients", num_steps=8)``. It
      is differentiated twice (input, then parameters).
    x: inputs ``[B, *F]``.
    target: true classes, an int or ``[B]``.
    key: PRNG key for ``delta``; the explainer gets ``core.call_key(key, 0)``
      at both points (common random numbers).
    epsilon: radius in input units, a scalar or broadcastable to ``x[0]``
      (pass ``eps / std_c`` per channel for per-channel normalised inputs). Traced.
    lambda_l2: weight of the squared-l2 part (>= 0). Traced.
    lambda_cos: weight of the cosine-distance part (>= 0). Traced.
    perturbation: ``"uniform"``, ``"gaussian"`` or ``"grad_sign"``.
    stop_gradient_source: treat ``g(x)`` as a constant (reference default).
    reduction: ``"mean"`` over the batch (scalar) or ``"none"`` (``[B]``).

  Returns:
    A scalar, or ``[B]`` per-example values.

  References:
    Joo, Jeong, Heo, Weller, Moon, "Towards More Robust Interpretation via
    Local Gradient Alignment", AAAI 2023. https://arxiv.org/abs/2211.15900
  """
  x, t = _common.prepare(fn, x, target)
  V.check_key(key)
  core.check_explainer(explainer, fn, x, t, core.call_key(key, 0), allow_precomputed=False,
                       what="gradient_alignment")
  eps = _common.check_epsilon(epsilon, x)
  V.check_nonnegative(lambda_l2, name="lambda_l2")
  V.check_nonnegative(lambda_cos, name="lambda_cos")
  V.check_choice(perturbation, PERTURBATIONS, name="perturbation")
  V.check_choice(reduction, _common.REDUCTIONS, name="reduction")
  return _gradient_alignment(fn=fn, explainer=explainer, x=x, t=t, key=key, epsilon=eps,
                             lambda_l2=jnp.asarray(lambda_l2, x.dtype),
                             lambda_cos=jnp.asarray(lambda_cos, x.dtype),
                             perturbation=perturbation,
                             stop_gradient_source=bool(stop_gradient_source),
                             reduction=reduction)


@jit_with_callables(callables=("fn", "explainer"),
                    static_argnames=("perturbation", "stop_gradient_source"))
def _alignment_distances(fn, explainer, x, t, key, epsilon, perturbation, stop_gradient_source):
  return alignment_terms(fn, x, t, key=key, epsilon=epsilon, perturbation=perturbation,
                         stop_gradient_source=stop_gradient_source, explainer=explainer)


def alignment_distances(fn: Callable, explainer: Explainer | None, x: Float[Array, "B ..."],
                        target: Target, *, key: jax.Array, epsilon: Any = 4 / 255,
                        perturbation: str = "uniform",
                        stop_gradient_source: bool = True) -> AlignmentTerms:
  """The two per-example distances that `gradient_alignment` weights.

  ``gradient_alignment(..., reduction="none") == lambda_l2 * d.l2 + lambda_cos
  * d.cosd`` for ``d = alignment_distances(...)`` with the same arguments
  (training terms log both parts). Works inside a traced loss: the checks
  below look at shapes and Python settings only.

  Args:
    fn, x, target, key, epsilon, perturbation, stop_gradient_source: as in
      `gradient_alignment`.
    explainer: as in `gradient_alignment`; ``None`` is the gradient of the
      target logit (`rattr_jax.attribution.gradient`).

  Returns:
    `AlignmentTerms` with ``l2`` and ``cosd``, each ``[B]``.

  References:
    Joo, Seo, Ko, Kim, Kim, "Towards More Robust Interpretation via Local
    Gradient Alignment", AAAI 2023. https://arxiv.org/abs/2211.15900
  """
  x, t = _common.prepare(fn, x, target)
  V.check_key(key)
  if explainer is not None:
    core.check_explainer(explainer, fn, x, t, core.call_key(key, 0), allow_precomputed=False,
                         what="alignment_distances")
  eps = _common.check_epsilon(epsilon, x)
  V.check_choice(perturbation, PERTURBATIONS, name="perturbation")
  return _alignment_distances(fn=fn, explainer=explainer, x=x, t=t, key=key, epsilon=eps,
                              perturbation=perturbation,
                              stop_gradient_source=bool(stop_gradient_source))
