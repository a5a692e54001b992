"""SENN faithfulness: do the relevances predict the effect of removing each concept?

For every concept ``i``: ``drop_i = p_y(x) - p_y(x with concept i removed)``
(``y`` the prediction); the faithfulness of ``x`` is the Pearson correlation,
over ``i``, between ``drop_i`` and the relevance ``theta_iy(x)``
(Alvarez-Melis & Jaakkola 2018, Sec. 5; the authors' code correlates the
predicted class's ``theta`` with the probability drop and skips the bias
concept). **Higher is better** (1: relevances order and scale concepts by their
effect).

Two removals:

* ``"concept"`` (learned concepts; the issue's definition): ``h_i -> 0`` with
  ``theta(x)`` unchanged, which for the sum aggregator removes exactly the
  term ``theta_i h_i`` from the scores. Computed for all ``k`` at once.
* ``"feature"`` (identity concepts, the authors' tabular code): ``x_i`` is
  replaced by a baseline (e.g. the training median) and the whole model is
  re-evaluated, so ``theta`` changes too. Delegates to
  `rattr_jax.metrics.faithfulness_estimate`.

``attribution="contribution"`` correlates ``theta_iy h_i`` instead of
``theta_iy``; with concept removal and ``output="logit"`` that is exactly the
removed logit, so it scores 1 by construction (a sanity check, not a metric).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax.core import pearson_rows as _pearson_flat
from rattr_jax.senn._conceptizers import IdentityConceptizer
from rattr_jax.senn._stability import _has_bias, predicted_class

REMOVALS = ("concept", "feature")
ATTRIBUTIONS = ("relevance", "contribution")
OUTPUTS = ("probability", "logit")


@functools.partial(jax.jit, static_argnames=("output",))
def _concept_drops(graphdef, state, x, t, output):
  m = nnx.merge(graphdef, state)
  agg = m.aggregator
  logits, e = m(x, return_explanation=True)
  scores = agg.scores(e.theta, e.h)                            # [B, T]
  removed = scores[:, None, :] - e.theta * e.h[:, :, None]     # [B, k, T]
  p = jax.nn.softmax(logits, -1) if output == "probability" else _margin(agg, logits)
  p_rm = agg.logits(removed.reshape(-1, removed.shape[-1]))
  p_rm = jax.nn.softmax(p_rm, -1) if output == "probability" else _margin(agg, p_rm)
  p_rm = p_rm.reshape(removed.shape[:2] + (-1,))
  py = jnp.take_along_axis(p, t[:, None], 1)                   # [B, 1]
  py_rm = jnp.take_along_axis(p_rm, t[:, None, None], 2)[..., 0]  # [B, k]
  return py - py_rm, agg.class_relevance(e.theta, t), e.h


def _margin(agg, logits):
  """Logits, except ``[-z, z]`` for the binary ``[0, z]`` (class 0's logit is constant)."""
  if agg.kind == "sigmoid":
    return logits - logits[:, ::-1]
  return logits


def _margin_fn(agg, fn, x):
  return _margin(agg, fn(x))


def _corr(a, b):
  return _pearson_flat(a, b)


def senn_faithfulness(model, x: Float[Array, "B ..."], *, target: Any = None,
                      removal: str = "concept", attribution: str = "relevance",
                      output: str = "probability", baseline: Any = "zero",
                      batch_size: int | None = 64
                      ) -> Float[Array, "B"]:
  """Faithfulness of a SENN's explanations (see module docstring). **Higher is better.**

  Args:
    model: a `rattr_jax.senn.SENN`.
    x: inputs ``[B, *F]``.
    target: explained class; default the prediction.
    removal: ``"concept"`` (``h_i -> 0``) or ``"feature"`` (identity concepts
      only: ``x_i -> baseline``, model re-evaluated).
    attribution: ``"relevance"`` (``theta_iy``, the paper) or
      ``"contribution"`` (``theta_iy h_i``).
    output: ``"probability"`` (the paper: drop of the predicted class's
      probability) or ``"logit"`` (drop of its logit; with concept removal
      the logit drop *is* ``theta_iy h_i``). For the binary sigmoid aggregator
      the "logit" of class 1 is ``z`` and of class 0 is ``-z``.
    baseline: removal value for ``"feature"``: ``"zero"``, ``"median"``... or
      an array ``[*F]`` (e.g. the training median per feature).
    batch_size: features removed per model call (``"feature"``).

  Returns:
    ``[B]`` Pearson correlations in [-1, 1]; NaN when the relevances or the
    drops are constant over concepts. The bias concept is excluded.

  References:
    Alvarez-Melis, Jaakkola, NeurIPS 2018. https://arxiv.org/abs/1806.07538
  """
  x = V.check_batch(x)
  V.check_choice(removal, REMOVALS, name="removal")
  V.check_choice(attribution, ATTRIBUTIONS, name="attribution")
  V.check_choice(output, OUTPUTS, name="output")
  if removal == "feature" and not isinstance(model.conceptizer, IdentityConceptizer):
    raise ValueError("`removal`='feature' needs identity concepts (one concept per input "
                     "feature); use removal='concept' for learned concepts.")
  t = predicted_class(model, x) if target is None else V.check_target(
      target, x.shape[0], model.num_classes)
  graphdef, state = nnx.split(model)
  drop = _has_bias(model)
  if removal == "concept":
    drops, rel, h = _concept_drops(graphdef, state, x, t, output)
    att = rel if attribution == "relevance" else rel * h
    if drop:
      drops, att = drops[:, :-1], att[:, :-1]
    return _corr(att, drops)
  from rattr_jax.core import precomputed
  from rattr_jax.metrics import faithfulness_estimate
  from rattr_jax.models import as_fn
  theta = model.relevances(x)
  rel = model.aggregator.class_relevance(theta, t)
  if drop:
    rel = rel[:, :-1]
  att = rel if attribution == "relevance" else rel * x.reshape(x.shape[0], -1)
  fn = as_fn(model)
  if output == "logit":
    fn = jax.tree_util.Partial(_margin_fn, model.aggregator, fn)
  return faithfulness_estimate(fn, precomputed(att.reshape(x.shape)), x, t, baseline=baseline,
                               output=output, chunk_size=batch_size)
