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
    raise ValueError("`model` must be a SENN (rattr_jax.senn.SENN); got "
                     f"{type(model).__name__}.")
  return V.check_batch(x)


def _learnable_concepts(model) -> bool:
  return len(jax.tree_util.tree_leaves(nnx.state(model.conceptizer, nnx.Param))) > 0


# --------------------------------------------------------------- residuals ----
def _projections(key, batch, num_outputs, num_projections, dtype):
  """Gaussian probes ``v [P, B, T]`` (``E[v v^T] = I``); the identity when exact."""
  if num_projections is None:
    eye = jnp.eye(num_outputs, dtype=dtype)
    return jnp.broadcast_to(eye[:, None, :], (num_outputs, batch, num_outputs)), 1.0
  v = jax.random.normal(key, (num_projections, batch, num_outputs), dtype)
  return v, 1.0 / num_projections


def _split(key, num_projections):
  if key is None:
    return None, None
  if num_projections is None:
    return key, None
  k1, k2 = jax.random.split(key)
  return k1, k2


def _residual_clean(model, x, key, num_projections):
  """``v^T (sum_i h_i grad theta_i)`` per example and probe: ``[P, B, *F]``.

  Exact (``num_projections=None``): the probes are the ``T`` unit vectors, so
  the result is the per-class residual ``[T, B, *F]``.
  """
  kd, kp = _split(key, num_projections)
  h, x_hat = model.concepts(x)
  t = model.parametrizer.num_outputs
  v, w = _projections(kp, x.shape[0], t, num_projections, x.dtype)

  def weighted(xx):
    theta = model.relevances(xx, key=kd)
    return jnp.einsum("bk,bkt,pbt->p", h, theta, v), theta

  r, theta = jax.jacrev(weighted, has_aux=True)(x)      # r: [P, B, *F]
  return r, w, theta, h, x_hat


def _residual_original(model, x, key, num_projections):
  """``v^T (J_out - theta^T J_h)`` with ``out`` = log-softmax / sigmoid: ``[P, B, *F]``."""
  kd, kp = _split(key, num_projections)
  agg = model.aggregator
  t = model.parametrizer.num_outputs
  v, w = _projections(kp, x.shape[0], t, num_projections, x.dtype)

  def out(xx):
    h, x_hat = model.concepts(xx)
    theta = model.relevances(xx, key=kd)
    o = agg.output(agg.scores(theta, h))                 # [B, T]
    return jnp.einsum("bt,pbt->p", o, v), (theta, h, x_hat)

  jf, (theta, h, x_hat) = jax.jacrev(out, has_aux=True)(x)   # [P, B, *F]
  _, vjp_h = jax.vjp(lambda xx: model.concepts(xx)[0], x)
  cts = jnp.einsum("bkt,pbt->pbk", theta, v)
  theta_jh = jax.vmap(lambda ct: vjp_h(ct)[0])(cts)          # [P, B, *F]
  return jf - theta_jh, w, theta, h, x_hat


def robustness_residual_impl(model, x, *, convention: str = "clean", key=None,
                             num_projections: int | None = None):
  """Unvalidated core (call inside a traced loss).

  Returns ``(r [P, B, *F], weight, theta, h, x_hat)``: with
  ``num_projections=None`` the exact residual per output (``P = T``,
  ``weight = 1``); otherwise ``P`` Gaussian probes of it, with ``weight = 1/P``
  so that ``weight * sum ||r||^2`` is an unbiased estimate of the exact
  squared norm. ``key`` is split into a dropout key and a probe key.
  """
  if convention == "clean":
    return _residual_clean(model, x, key, num_projections)
  return _residual_original(model, x, key, num_projections)


def robustness_from_residual(r: jax.Array, weight, convention: str, reduction: str = "mean"):
  """``r [P, B, *F]`` -> the loss (scalar) or per-example values ``[B]`` (clean only)."""
  sq = weight * jnp.sum(r.reshape(r.shape[0], r.shape[1], -1) ** 2, axis=(0, 2))   # [B]
  if convention == "original":
    s = jnp.sum(sq)
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)
  return jnp.mean(sq) if reduction == "mean" else sq


def _check_projections(num_projections, key):
  if num_projections is None:
    return None
  num_projections = V.check_positive_int(num_projections, name="num_projections")
  V.check_key(key)
  return num_projections


# ------------------------------------------------------------------ public ----
@functools.partial(jax.jit, static_argnames=("graphdef", "convention"))
def _residual_jit(graphdef, state, x, key, convention):
  model = nnx.merge(graphdef, state)
  r, _, theta, h, _ = robustness_residual_impl(model, x, convention=convention, key=key)
  return jnp.moveaxis(r, 0, 1), theta, h


def senn_robustness_residual(model, x: jax.Array, *, convention: str = "clean",
                             key: jax.Array | None = None) -> tuple[jax.Array, jax.Array,
                                                                    jax.Array]:
  """The exact per-example robustness residual of a SENN, without forming ``J_h``.

  ``convention="clean"``: ``r_t = grad_x z_t - theta_t^T J_h = sum_i h_i grad_x
  theta_it`` for the logits (scores) ``z``; ``"original"``: ``grad_x out_t -
  theta_t^T J_h`` for the model output ``out`` = log-softmax (sigmoid if
  binary), as in the authors' code. See the module docstring.

  Args:
    model: a `rattr_jax.senn.SENN`.
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


@functools.partial(jax.jit, static_argnames=("graphdef", "convention", "reduction",
                                             "num_projections"))
def _robustness_jit(graphdef, state, x, key, convention, reduction, num_projections):
  model = nnx.merge(graphdef, state)
  r, w, _, _, _ = robustness_residual_impl(model, x, convention=convention, key=key,
                                           num_projections=num_projections)
  return robustness_from_residual(r, w, convention, reduction)


def senn_robustness_loss(model, x: jax.Array, *, convention: str = "clean",
                         reduction: str = "mean", num_projections: int | None = None,
                         key: jax.Array | None = None) -> jax.Array:
  """SENN's robustness loss ``L_theta = ||grad_x f - theta^T J_h||``.

  * ``"clean"``: ``mean_b ||r_b||_F^2`` over the logits' residuals
    (``reduction="none"`` returns the ``[B]`` per-example values).
  * ``"original"``: ``||r||_F`` over the whole batch tensor of the
    log-softmax/sigmoid residuals, unsquared (only ``reduction="mean"``, i.e.
    the one batch scalar, exists for it).

  ``num_projections=None`` (default) computes the residual of every output
  exactly (``T`` backward passes through ``theta``). An integer ``P`` instead
  uses ``P`` Gaussian probes ``v ~ N(0, I_T)`` per example, ``||r_b||_F^2 ~=
  1/P sum_p ||v_p^T r_b||^2`` (unbiased for the squared norm, as in Hoffman et
  al.'s Jacobian regularizer), ``P`` backward passes instead of ``T``; it
  needs ``key``.

  Lower is better: 0 means ``theta`` acts locally like the gradient.
  """
  x = _check_model(model, x)
  V.check_choice(convention, CONVENTIONS, name="convention")
  V.check_choice(reduction, REDUCTIONS, name="reduction")
  if convention == "original" and reduction != "mean":
    raise ValueError("`reduction`='none' does not exist for `convention`='original' (one "
                     "Frobenius norm over the batch).")
  num_projections = _check_projections(num_projections, key)
  graphdef, state = nnx.split(model)
  return _robustness_jit(graphdef, state, x, key, convention, reduction, num_projections)


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
                   lambda_sparsity=2e-5, convention="clean", key=None,
                   num_projections=None):
  """Unvalidated core of `senn_loss` (call inside a traced loss function)."""
  r, w, theta, h, x_hat = robustness_residual_impl(model, x, convention=convention, key=key,
                                                   num_projections=num_projections)
  robust = robustness_from_residual(r, w, convention)
  logits = model.aggregator(theta, h)
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
  if _learnable_concepts(model):
    rec, sp = senn_concept_loss(x, x_hat, h, convention=convention)
  else:
    rec = sp = jnp.zeros((), logits.dtype)
  total = ce + lambda_robustness * robust + lambda_reconstruction * rec + lambda_sparsity * sp
  from rattr_jax.senn._model import SENNExplanation
  return total, SENNLossOutput(SENNLossTerms(ce, robust, rec, sp, total), logits,
                               SENNExplanation(theta, h, x_hat))


def check_loss_weights(lambda_robustness, lambda_reconstruction, lambda_sparsity, convention):
  V.check_nonnegative(lambda_robustness, name="lambda_robustness")
  V.check_nonnegative(lambda_reconstruction, name="lambda_reconstruction")
  V.check_nonnegative(lambda_sparsity, name="lambda_sparsity")
  V.check_choice(convention, CONVENTIONS, name="convention")


def senn_loss(model, x: jax.Array, y: jax.Array, *, lambda_robustness: Any = 1e-2,
              lambda_reconstruction: Any = 1.0, lambda_sparsity: Any = 2e-5,
              convention: str = "clean", num_projections: int | None = None,
              key: jax.Array | None = None) -> tuple[jax.Array, SENNLossOutput]:
  """The SENN training objective and its parts.

  ``L = CE(f(x), y) + lambda_robustness * L_theta + lambda_reconstruction *
  MSE(x_hat, x) + lambda_sparsity * ||h||_1``. One forward of ``theta`` serves
  both the logits and the robustness residual. Identity concepts have no
  concept loss. Differentiate it with respect to the model's parameters, e.g.
  ``jax.grad(lambda s: senn_loss(nnx.merge(graphdef, s), x, y)[0])(state)``.

  Args:
    model: a `rattr_jax.senn.SENN`.
    x: inputs ``[B, *F]``.
    y: integer labels ``[B]``.
    lambda_robustness: ``lambda`` (paper sweep 1e-4 ... 1; >= 0). Traced.
    lambda_reconstruction: weight of the reconstruction MSE (1 in the code).
    lambda_sparsity: L1 sparsity strength of ``h`` (2e-5 in the paper).
    convention: ``"clean"`` (default) or ``"original"`` (see module docstring).
    num_projections: ``None`` (exact, default) or the number of Gaussian
      probes of the residual (see `senn_robustness_loss`); needs ``key``.
    key: PRNG key for dropout (if the parametrizer has any) and probes.

  Returns:
    ``(total, SENNLossOutput(terms, logits, explanation))``. Lower is better.
  """
  x = _check_model(model, x)
  y = V.check_target(y, x.shape[0], model.num_classes, name="y")
  check_loss_weights(lambda_robustness, lambda_reconstruction, lambda_sparsity, convention)
  num_projections = _check_projections(num_projections, key)
  graphdef, state = nnx.split(model)
  lambdas = jnp.asarray([lambda_robustness, lambda_reconstruction, lambda_sparsity], x.dtype)
  return _loss_jit(graphdef, state, x, y, key, lambdas, convention, num_projections)


@functools.partial(jax.jit, static_argnames=("graphdef", "convention", "num_projections"))
def _loss_jit(graphdef, state, x, y, key, lambdas, convention, num_projections):
  return senn_loss_impl(nnx.merge(graphdef, state), x, y, lambda_robustness=lambdas[0],
                        lambda_reconstruction=lambdas[1], lambda_sparsity=lambdas[2],
                        convention=convention, key=key, num_projections=num_projections)
