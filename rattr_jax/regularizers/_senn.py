"""SENN losses: the robustness loss (without the concept Jacobian), the concept loss, the total.

The robustness loss of Alvarez-Melis & Jaakkola (2018) asks the relevances to
behave locally like the model's input gradient:

``L_theta(f)(x) = || grad_x f(x) - theta(x)^T J_h(x) ||``, with ``J_h`` the
``k x d`` Jacobian of the concepts.

**Clean convention (default), computed without ``J_h``.** With the sum
aggregator the logits are ``z_t = sum_i theta_it(x) h_i(x)``, so

``grad_x z_t - theta_t^T J_h = sum_i h_i(x) grad_x theta_it(x) = grad_x [sum_i h_i theta_it(x')]|_{x'=x}``

with ``h`` held fixed. We evaluate ``h = h(x)`` once, outside the
differentiated function, and take ``jax.jacrev`` of ``x' -> sum_b sum_i h_bi
theta_bit(x')`` (one output per class ``t``; the batch sum gives per-example
gradients because examples do not interact in ``theta``). That is one forward
and ``T`` vectorised backward passes through ``theta`` only: the conceptizer is
never differentiated with respect to ``x`` and ``J_h`` is never formed.
Parameter gradients still flow through both ``h`` (its value) and ``theta``,
so the parameter gradient equals that of the explicit formula. The loss is
the mean over the batch of the squared Frobenius norm of each example's
``[T, d]`` residual: batch-size independent, smooth, and exactly zero for a
constant ``theta`` (a linear model).

**Original-code convention** (``convention="original"``, dmelis/SENN
``GradPenaltyTrainer`` type ``grad3``): the Jacobian is taken of the model's
*output* -- log-softmax, or sigmoid for binary tasks -- not of the logits, and
the penalty is one unsquared Frobenius norm over the whole ``[B, d, T]``
residual tensor (so it grows like ``sqrt(B)``, which rescales ``lambda``).
``theta^T J_h`` is still computed without ``J_h``: one vector-Jacobian product
of ``h`` per output ``t`` with cotangent ``theta_t``. Note that under this
convention even a linear model (constant ``theta``) has a non-zero penalty,
because ``d log_softmax(z) / dx != dz / dx``.

The concept loss is ``MSE(x_hat, x) + lambda_sparsity * ||h||_1``; the total is
``CE + lambda_robustness * L_theta + lambda_reconstruction * MSE +
lambda_sparsity * ||h||_1`` (the notes' fact 4; the paper's ``xi`` is split into
the reconstruction weight, 1, and the sparsity strength, 2e-5).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rattr_jax import _validation as V

CONVENTIONS = ("clean", "original")
REDUCTIONS = ("mean", "none")


class SENNLossTerms(NamedTuple):
  """The parts of the SENN objective (scalars, before weighting).

  Attributes:
    prediction: mean cross-entropy.
    robustness: ``L_theta`` in the chosen convention.
    reconstruction: ``mean((x_hat - x)^2)`` (0 for identity concepts).
    sparsity: ``||h||_1``, averaged over the batch (``"clean"``) or summed
      over it (``"original"``); 0 for identity concepts.
    total: the weighted sum that is minimised.
  """

  prediction: jax.Array
  robustness: jax.Array
  reconstruction: jax.Array
  sparsity: jax.Array
  total: jax.Array


class SENNLossOutput(NamedTuple):
  """Auxiliary output of `senn_loss`: the terms, the logits and the explanation."""

  terms: SENNLossTerms
  logits: jax.Array
  explanation: Any


def _is_senn(model) -> bool:
  return all(hasattr(model, a) for a in ("concepts", "relevances", "aggregator", "conceptizer"))


def _check_model(model, x):
  if not _is_senn(model):
    raise ValueError("`model` must be a SENN (rattr_jax.models.senn.SENN); got "
                     f"{type(model).__name__}.")
  return V.check_batch(x)


def _learnable_concepts(model) -> bool:
  return len(jax.tree_util.tree_leaves(nnx.state(model.conceptizer, nnx.Param))) > 0


# --------------------------------------------------------------- residuals ----
def _residual_clean(model, x, key):
  """``sum_i h_i grad theta_i`` per example and output: ``[B, T, *F]``."""
  h, x_hat = model.concepts(x)

  def weighted(xx):
    theta = model.relevances(xx, key=key)
    return jnp.einsum("bk,bkt->t", h, theta), theta

  r, theta = jax.jacrev(weighted, has_aux=True)(x)      # r: [T, B, *F]
  return jnp.moveaxis(r, 0, 1), theta, h, x_hat


def _residual_original(model, x, key):
  """``J_out - theta^T J_h`` with ``out`` = log-softmax / sigmoid: ``[B, T, *F]``."""
  agg = model.aggregator

  def out(xx):
    h, x_hat = model.concepts(xx)
    theta = model.relevances(xx, key=key)
    o = agg.output(agg.scores(theta, h))                 # [B, T]
    return jnp.sum(o, axis=0), (theta, h, x_hat)

  jf, (theta, h, x_hat) = jax.jacrev(out, has_aux=True)(x)   # [T, B, *F]
  _, vjp_h = jax.vjp(lambda xx: model.concepts(xx)[0], x)
  theta_jh = jax.vmap(lambda ct: vjp_h(ct)[0])(jnp.moveaxis(theta, 2, 0))  # [T, B, *F]
  return jnp.moveaxis(jf - theta_jh, 0, 1), theta, h, x_hat


def robustness_residual_impl(model, x, *, convention: str = "clean", key=None):
  """Unvalidated core (call inside a traced loss): ``(residual, theta, h, x_hat)``."""
  if convention == "clean":
    return _residual_clean(model, x, key)
  return _residual_original(model, x, key)


def _sq_norm_per_example(r):
  return jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1)


def _safe_norm(r):
  s = jnp.sum(r * r)
  pos = s > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def robustness_from_residual(r: jax.Array, convention: str, reduction: str = "mean"):
  if convention == "original":
    return _safe_norm(r)
  per = _sq_norm_per_example(r)
  return jnp.mean(per) if reduction == "mean" else per


# ------------------------------------------------------------------ public ----
@functools.partial(jax.jit, static_argnames=("graphdef", "convention"))
def _residual_jit(graphdef, state, x, key, convention):
  model = nnx.merge(graphdef, state)
  r, theta, h, _ = robustness_residual_impl(model, x, convention=convention, key=key)
  return r, theta, h


def senn_robustness_residual(model, x: jax.Array, *, convention: str = "clean",
                             key: jax.Array | None = None) -> tuple[jax.Array, jax.Array,
                                                                    jax.Array]:
  """The per-example robustness residual of a SENN, without forming ``J_h``.

  ``convention="clean"``: ``r_t = grad_x z_t - theta_t^T J_h = sum_i h_i grad_x
  theta_it`` for the logits (scores) ``z``; ``"original"``: ``grad_x out_t -
  theta_t^T J_h`` for the model output ``out`` = log-softmax (sigmoid if
  binary), as in the authors' code. See the module docstring.

  Args:
    model: a `rattr_jax.models.senn.SENN`.
    x: inputs ``[B, *F]``.
    convention: ``"clean"`` (default) or ``"original"``.
    key: optional dropout key for the parametrizer (training only).

  Returns:
    ``(residual [B, T, *F], theta [B, k, T], h [B, k])``.

  References:
    Alvarez-Melis, Jaakkola, NeurIPS 2018, Eq. (3). https://arxiv.org/abs/1806.07538
  """
  x = _check_model(model, x)
  V.check_choice(convention, CONVENTIONS, name="convention")
  graphdef, state = nnx.split(model)
  return _residual_jit(graphdef, state, x, key, convention)


def senn_robustness_loss(model, x: jax.Array, *, convention: str = "clean",
                         reduction: str = "mean", key: jax.Array | None = None) -> jax.Array:
  """SENN's robustness loss ``L_theta = ||grad_x f - theta^T J_h||``.

  * ``"clean"``: ``mean_b ||r_b||_F^2`` over the logits' residuals
    (``reduction="none"`` returns the ``[B]`` per-example values).
  * ``"original"``: ``||r||_F`` over the whole batch tensor of the
    log-softmax/sigmoid residuals, unsquared (only ``reduction="mean"``, i.e.
    the one batch scalar, exists for it).

  Lower is better: 0 means ``theta`` acts locally like the gradient.
  """
  V.check_choice(reduction, REDUCTIONS, name="reduction")
  if convention == "original" and reduction != "mean":
    raise ValueError("`reduction`='none' does not exist for `convention`='original' (one "
                     "Frobenius norm over the batch).")
  r, _, _ = senn_robustness_residual(model, x, convention=convention, key=key)
  return robustness_from_residual(r, convention, reduction)


def senn_concept_loss(x: jax.Array, x_hat: jax.Array, h: jax.Array, *,
                      convention: str = "clean") -> tuple[jax.Array, jax.Array]:
  """Concept-loss parts ``(reconstruction, sparsity)``.

  ``reconstruction = mean((x_hat - x)^2)`` over all elements; ``sparsity =
  mean_b ||h_b||_1`` (``"clean"``) or ``sum_b ||h_b||_1`` (``"original"``, the
  authors' code, which sums over the batch). Lower is better for both.
  """
  rec = jnp.mean((x_hat - x) ** 2)
  l1 = jnp.sum(jnp.abs(h), axis=1)
  return rec, (jnp.sum(l1) if convention == "original" else jnp.mean(l1))


def senn_loss_impl(model, x, y, *, lambda_robustness, lambda_reconstruction=1.0,
                   lambda_sparsity=2e-5, convention="clean", key=None):
  """Unvalidated core of `senn_loss` (call inside a traced loss function)."""
  r, theta, h, x_hat = robustness_residual_impl(model, x, convention=convention, key=key)
  robust = robustness_from_residual(r, convention)
  logits = model.aggregator(theta, h)
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
  if _learnable_concepts(model):
    rec, sp = senn_concept_loss(x, x_hat, h, convention=convention)
  else:
    rec = sp = jnp.zeros((), logits.dtype)
  total = ce + lambda_robustness * robust + lambda_reconstruction * rec + lambda_sparsity * sp
  from rattr_jax.models.senn import SENNExplanation
  return total, SENNLossOutput(SENNLossTerms(ce, robust, rec, sp, total), logits,
                               SENNExplanation(theta, h, x_hat))


def check_loss_weights(lambda_robustness, lambda_reconstruction, lambda_sparsity, convention):
  V.check_nonnegative(lambda_robustness, name="lambda_robustness")
  V.check_nonnegative(lambda_reconstruction, name="lambda_reconstruction")
  V.check_nonnegative(lambda_sparsity, name="lambda_sparsity")
  V.check_choice(convention, CONVENTIONS, name="convention")


def senn_loss(model, x: jax.Array, y: jax.Array, *, lambda_robustness: Any = 1e-2,
              lambda_reconstruction: Any = 1.0, lambda_sparsity: Any = 2e-5,
              convention: str = "clean",
              key: jax.Array | None = None) -> tuple[jax.Array, SENNLossOutput]:
  """The SENN training objective and its parts.

  ``L = CE(f(x), y) + lambda_robustness * L_theta + lambda_reconstruction *
  MSE(x_hat, x) + lambda_sparsity * ||h||_1``. One forward of ``theta`` serves
  both the logits and the robustness residual. Identity concepts have no
  concept loss. Differentiate it with respect to the model's parameters, e.g.
  ``jax.grad(lambda s: senn_loss(nnx.merge(graphdef, s), x, y)[0])(state)``.

  Args:
    model: a `rattr_jax.models.senn.SENN`.
    x: inputs ``[B, *F]``.
    y: integer labels ``[B]``.
    lambda_robustness: ``lambda`` (paper sweep 1e-4 ... 1; >= 0). Traced.
    lambda_reconstruction: weight of the reconstruction MSE (1 in the code).
    lambda_sparsity: L1 sparsity strength of ``h`` (2e-5 in the paper).
    convention: ``"clean"`` (default) or ``"original"`` (see module docstring).
    key: optional dropout key.

  Returns:
    ``(total, SENNLossOutput(terms, logits, explanation))``. Lower is better.
  """
  x = _check_model(model, x)
  y = V.check_target(y, x.shape[0], model.num_classes, name="y")
  check_loss_weights(lambda_robustness, lambda_reconstruction, lambda_sparsity, convention)
  return senn_loss_impl(model, x, y, lambda_robustness=lambda_robustness,
                        lambda_reconstruction=lambda_reconstruction,
                        lambda_sparsity=lambda_sparsity, convention=convention, key=key)
