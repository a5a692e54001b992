"""Level-set geometry of the decision function (Dombrowski et al.; Ghorbani et al.).

* `principal_curvature`: the principal curvatures of the level set ``S =
  {z : s(z) = s(x)}`` through ``x``: eigenvalues of the shape operator
  ``P H P / ||grad s||`` restricted to the tangent space, with ``P = I - n
  n^T`` and ``n = grad s / ||grad s||`` the unit normal. Dombrowski et al.'s
  Theorem 1 bounds how fast the normalised gradient explanation ``n`` can
  change along ``S`` by the largest magnitude ``|lambda_max|``.
* `gradient_angles`: the angles between the top Hessian eigenvectors and the
  gradient. Ghorbani et al. argue that the dominant directions are nearly
  orthogonal to the gradient, so moving along them changes the explanation
  but the prediction only to second order.
* `effective_rank`: how many eigen-directions the Hessian effectively has.

All three use Hessian-vector products only (Lanczos / SLQ).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax.curvature import _hvp, _spectrum
from rattr_jax.curvature._results import GradientAngles, PrincipalCurvature

EFFECTIVE_RANKS = ("entropy", "stable", "participation")
EIGEN_ORDERS = ("magnitude", "algebraic")


# ----------------------------------------------------------------------------
# Principal curvature.


@jit_with_callables(static_argnames=("k", "num_iters", "objective", "mode"))
def _principal_curvature(fn, x, t, key, k, num_iters, objective, mode):
  bsz = x.shape[0]
  grad, op = _hvp.input_hessian_operator(fn, x, t, objective, mode)
  hflat = _hvp.flat_operator(op, x.shape)
  g = grad.reshape(bsz, -1)
  gnorm = jnp.linalg.norm(g, axis=-1)
  defined = gnorm > 0
  normal = g / jnp.where(defined, gnorm, 1)[:, None]
  inv = jnp.where(defined, 1 / jnp.where(defined, gnorm, 1), 0)

  def project(v):
    return v - normal * jnp.sum(normal * v, axis=-1, keepdims=True)

  def matvec(v):
    return project(hflat(project(v))) * inv[:, None]

  k0, k1 = jax.random.split(key)
  v0 = jax.random.normal(k0, g.shape, x.dtype)
  _, _, _, mag = _spectrum.eigs_from_operator(matvec, v0, k1, k, num_iters, project)
  return PrincipalCurvature(
      curvature=mag.values[:, 0], principal_curvatures=mag.values,
      directions=mag.vectors.reshape((bsz, k) + x.shape[1:]), residuals=mag.residuals,
      gradient_norm=gnorm, defined=defined)


def principal_curvature(fn: Callable, x: jax.Array, target: Target, *, num_iters: int,
                        key: jax.Array, k: int = 1, objective: str = "logit",
                        mode: str = "auto") -> PrincipalCurvature:
  """Principal curvatures of the level set of the target logit through each ``x``.

  The shape operator of ``S = {z : s(z) = s(x_b)}`` is ``P H P /
  ||grad s||`` on the tangent space (``P`` projects out the unit normal
  ``grad s / ||grad s||``). Lanczos, started and restarted inside the tangent
  space, returns its ``k`` eigenvalues of largest magnitude. For ``s(z) =
  ||z||^2`` (a sphere of radius ``r``) every principal curvature is ``1/r``.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    num_iters: Lanczos steps, ``< n`` (the tangent space has ``n - 1``
      dimensions).
    key: PRNG key.
    k: number of principal curvatures returned, ``<= num_iters``.
    objective: ``"logit"`` or ``"loss"``.
    mode: as in `hvp`.

  Returns:
    A `PrincipalCurvature`; ``curvature [B]`` is Dombrowski et al.'s
    ``lambda_max`` (signed). Lower ``|curvature|`` means a more robust gradient
    explanation. Zero for ReLU networks (flat level sets almost everywhere)
    and where the gradient vanishes (``defined`` is then ``False``).

  References:
    Dombrowski et al., "Explanations can be manipulated and geometry is to
    blame", NeurIPS 2019, Theorem 1. https://arxiv.org/abs/1906.07983
  """
  x, t, mode = _hvp.prepare(fn, x, target, objective, mode)
  n = _hvp.num_features(x)
  k, num_iters = _spectrum.check_iters(k, num_iters, n - 1,
                                       max_dim_name="the tangent-space dimension n - 1")
  key = V.check_key(key)
  return _principal_curvature(fn, x, t, key, k, num_iters, objective, mode)


# ----------------------------------------------------------------------------
# Angles between top eigenvectors and the gradient.


@jit_with_callables(static_argnames=("k", "num_iters", "objective", "mode", "by"))
def _gradient_angles(fn, x, t, key, k, num_iters, objective, mode, by):
  bsz = x.shape[0]
  grad, op = _hvp.input_hessian_operator(fn, x, t, objective, mode)
  g = grad.reshape(bsz, -1)
  k0, k1 = jax.random.split(key)
  v0 = jax.random.normal(k0, g.shape, x.dtype)
  _, _, alg, mag = _spectrum.eigs_from_operator(_hvp.flat_operator(op, x.shape), v0, k1, k,
                                                num_iters)
  pairs = mag if by == "magnitude" else alg
  gnorm = jnp.linalg.norm(g, axis=-1)
  unorm = jnp.linalg.norm(pairs.vectors, axis=-1)
  denom = gnorm[:, None] * unorm
  cos = jnp.abs(jnp.einsum("bkn,bn->bk", pairs.vectors, g)) / jnp.where(denom > 0, denom, 1)
  cos = jnp.clip(cos, 0, 1)
  return GradientAngles(jnp.degrees(jnp.arccos(cos)), cos, pairs.values, grad)


def gradient_angles(fn: Callable, x: jax.Array, target: Target, *, k: int, num_iters: int,
                    key: jax.Array, by: str = "magnitude", objective: str = "logit",
                    mode: str = "auto") -> GradientAngles:
  """Angles between the top-``k`` Hessian eigenvectors and the gradient.

  A random direction in ``n`` dimensions is nearly orthogonal to any fixed
  vector too (``E|cos| ~ sqrt(2 / (pi n))``); compare against that baseline.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    k: number of eigenvectors, ``<= num_iters``.
    num_iters: Lanczos steps, ``<= n``.
    key: PRNG key.
    by: ``"magnitude"`` (largest ``|lambda|``) or ``"algebraic"``.
    objective: ``"logit"`` or ``"loss"``.
    mode: as in `hvp`.

  Returns:
    A `GradientAngles` with ``angles [B, k]`` in degrees (90 = orthogonal;
    closer to 90 means the dominant curvature moves the explanation but not
    the prediction).

  References:
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", AAAI
    2019, sec. "Hessian analysis".
  """
  x, t, mode = _hvp.prepare(fn, x, target, objective, mode)
  k, num_iters = _spectrum.check_iters(k, num_iters, _hvp.num_features(x))
  V.check_choice(by, EIGEN_ORDERS, name="by")
  key = V.check_key(key)
  return _gradient_angles(fn, x, t, key, k, num_iters, objective, mode, by)


# ----------------------------------------------------------------------------
# Effective rank.


def effective_rank_from_density(density, kind: str) -> jax.Array:
  """Effective rank ``[B]`` from a `SpectralDensity` (see `SpectralDensity.effective_rank`)."""
  return density.effective_rank(kind)


@jit_with_callables(static_argnames=("num_samples", "num_iters", "objective", "mode",
                                     "chunk_size", "kind"))
def _effective_rank(fn, x, t, key, num_samples, num_iters, objective, mode, chunk_size, kind):
  dens = _spectrum._spectral_density(fn, x, t, key, num_samples, num_iters, objective, mode,
                                     chunk_size)
  return effective_rank_from_density(dens, kind)


def effective_rank(fn: Callable, x: jax.Array, target: Target, *, key: jax.Array,
                   num_samples: int = 4, num_iters: int = 30, kind: str = "entropy",
                   objective: str = "logit", mode: str = "auto",
                   chunk_size: int | None = None) -> jax.Array:
  """Effective rank of each example's input Hessian, from SLQ traces.

  With eigenvalues ``lambda_i``:

  * ``"entropy"`` (Roy & Vetterli): ``exp(-sum_i p_i log p_i)``, ``p_i =
    |lambda_i| / sum_j |lambda_j|``;
  * ``"stable"``: ``||H||_F^2 / ||H||_2^2``;
  * ``"participation"``: ``(sum |lambda_i|)^2 / sum lambda_i^2``.

  The traces ``tr |H|``, ``tr |H| log |H|`` and ``tr H^2`` are estimated by
  stochastic Lanczos quadrature (see `spectral_density`); ``||H||_2`` is the
  largest Ritz value magnitude. The result is therefore random, with an
  error that shrinks with ``num_samples``. It is exact when ``num_iters =
  n`` and ``H`` is diagonal (Rademacher probes). Lower means the curvature is
  concentrated in fewer directions (Ghorbani et al.'s low-rank Hessian).
  Zero for a zero Hessian (ReLU networks).

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    key: PRNG key.
    num_samples: SLQ probes, ``> 0``.
    num_iters: Lanczos steps per probe, ``<= n``.
    kind: ``"entropy"``, ``"stable"`` or ``"participation"``.
    objective: ``"logit"`` or ``"loss"``.
    mode: as in `hvp`.
    chunk_size: probes processed at once.

  Returns:
    ``[B]`` effective ranks in ``[0, n]``.

  References:
    Roy & Vetterli, "The effective rank: a measure of effective
    dimensionality", EUSIPCO 2007; Rudelson & Vershynin (stable rank), 2007.
  """
  x, t, mode = _hvp.prepare(fn, x, target, objective, mode)
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  _, num_iters = _spectrum.check_iters(None, num_iters, _hvp.num_features(x))
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  V.check_choice(kind, EFFECTIVE_RANKS, name="kind")
  key = V.check_key(key)
  return _effective_rank(fn, x, t, key, num_samples, num_iters, objective, mode, chunk_size,
                         kind)


def random_direction_angle(n: int) -> float:
  """Expected angle (degrees) between a fixed and a uniformly random direction's line.

  ``E[arccos |cos|]`` for a random unit vector in ``n`` dimensions, by a
  fixed-seed Monte-Carlo estimate (4096 draws).
  """
  rng = np.random.default_rng(0)
  u = rng.standard_normal((4096, n))
  c = np.abs(u[:, 0]) / np.linalg.norm(u, axis=1)
  return float(np.degrees(np.arccos(c)).mean())
