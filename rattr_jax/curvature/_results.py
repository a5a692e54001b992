"""Result pytrees of the curvature functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


def _xlogx(a):
  return jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a, 1)), 0)


@struct.dataclass
class HessianEigs:
  """Top eigenpairs of each example's input Hessian (Lanczos).

  Attributes:
    eigenvalues: ``[B, k]``, the ``k`` largest by algebraic value, descending.
    eigenvectors: ``[B, k, *F]``, unit eigenvectors shaped like ``x[b]``.
    magnitude_eigenvalues: ``[B, k]``, the ``k`` largest by ``|lambda|``
      (signed), in decreasing order of magnitude.
    magnitude_eigenvectors: ``[B, k, *F]``.
    residuals: ``[B, k]``, ``||H u - lambda u||`` for ``eigenvalues`` (small
      means converged).
    magnitude_residuals: ``[B, k]``, the same for ``magnitude_eigenvalues``.
    ritz_values: ``[B, num_iters]``, all Ritz values, ascending.
    num_restarts: ``[B]``, Lanczos breakdowns (an invariant subspace was
      exhausted: a low-rank or, for ReLU networks, zero Hessian).
  """

  eigenvalues: jax.Array
  eigenvectors: jax.Array
  magnitude_eigenvalues: jax.Array
  magnitude_eigenvectors: jax.Array
  residuals: jax.Array
  magnitude_residuals: jax.Array
  ritz_values: jax.Array
  num_restarts: jax.Array


@struct.dataclass
class ParamHessianEigs:
  """Top eigenpairs of the parameter Hessian of the batch-mean objective.

  Attributes:
    eigenvalues: ``[k]``, largest algebraic, descending.
    eigenvectors: pytree like ``params`` with a leading axis ``k``.
    magnitude_eigenvalues: ``[k]``, largest ``|lambda|`` (signed).
    magnitude_eigenvectors: pytree like ``params`` with a leading axis ``k``.
    residuals: ``[k]``; magnitude_residuals: ``[k]``.
    ritz_values: ``[num_iters]`` ascending.
  """

  eigenvalues: jax.Array
  eigenvectors: Any
  magnitude_eigenvalues: jax.Array
  magnitude_eigenvectors: Any
  residuals: jax.Array
  magnitude_residuals: jax.Array
  ritz_values: jax.Array


@struct.dataclass
class SpectralDensity:
  """Stochastic Lanczos quadrature of each example's Hessian spectrum.

  For probe ``s`` of example ``b``, Lanczos returns Ritz values ``nodes[b, s]``
  and Gauss weights ``weights[b, s]`` (squared first components of the Ritz
  vectors; they sum to 1). The spectral measure ``(1/n) sum_i delta(t -
  lambda_i)`` is estimated by ``mean_s sum_j weights[b,s,j] delta(t -
  nodes[b,s,j])``.

  Attributes:
    nodes: ``[B, num_samples, num_iters]``.
    weights: ``[B, num_samples, num_iters]``.
    dimension: ``n``, the number of input features (static).
  """

  nodes: jax.Array
  weights: jax.Array
  dimension: int = struct.field(pytree_node=False)

  def density(self, grid: jax.Array, *, sigma: Any) -> jax.Array:
    """Gaussian-smoothed density on ``grid``.

    Args:
      grid: ``[G]`` (shared) or ``[B, G]`` evaluation points.
      sigma: kernel width, a scalar or ``[B]``.

    Returns:
      ``[B, G]``: ``phi(t) = mean_s sum_j w_j N(t; theta_j, sigma^2)``, which
      integrates to 1.
    """
    grid = jnp.asarray(grid, self.nodes.dtype)
    if grid.ndim == 1:
      grid = jnp.broadcast_to(grid, (self.nodes.shape[0],) + grid.shape)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, self.nodes.dtype), (self.nodes.shape[0],))
    d = grid[:, None, None, :] - self.nodes[..., None]                 # [B, S, m, G]
    s = sigma[:, None, None, None]
    k = jnp.exp(-0.5 * (d / s) ** 2) / (s * jnp.sqrt(2 * jnp.pi))
    return jnp.mean(jnp.sum(self.weights[..., None] * k, axis=2), axis=1)

  def trace(self, f: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """SLQ estimate of ``tr f(H)`` for each example, ``[B]``."""
    return self.dimension * jnp.mean(jnp.sum(self.weights * f(self.nodes), axis=2), axis=1)

  def effective_rank(self, kind: str = "entropy") -> jax.Array:
    """Effective rank ``[B]`` from SLQ traces; see `rattr_jax.curvature.effective_rank`.

    ``"entropy"``: ``exp(-sum p_i log p_i)`` with ``p_i = |lambda_i| / tr|H|``;
    ``"stable"``: ``tr H^2 / max|theta|^2``; ``"participation"``:
    ``(tr|H|)^2 / tr H^2``. Zero for a zero Hessian.
    """
    if kind not in ("entropy", "stable", "participation"):
      raise ValueError(f"Unknown `kind` {kind!r}; expected 'entropy', 'stable' or "
                       "'participation'.")
    if kind == "entropy":
      nuc = self.trace(jnp.abs)
      ent = self.trace(lambda z: _xlogx(jnp.abs(z)))
      pos = nuc > 0
      safe = jnp.where(pos, nuc, 1)
      return jnp.where(pos, jnp.exp(jnp.log(safe) - ent / safe), 0)
    fro2 = self.trace(jnp.square)
    if kind == "stable":
      top = jnp.max(jnp.abs(self.nodes), axis=(1, 2))
      pos = top > 0
      return jnp.where(pos, fro2 / jnp.where(pos, top, 1) ** 2, 0)
    nuc = self.trace(jnp.abs)
    pos = fro2 > 0
    return jnp.where(pos, nuc ** 2 / jnp.where(pos, fro2, 1), 0)

  def spectral_range(self) -> tuple[jax.Array, jax.Array]:
    """Smallest and largest Ritz value per example (``[B]`` each)."""
    return jnp.min(self.nodes, axis=(1, 2)), jnp.max(self.nodes, axis=(1, 2))


@struct.dataclass
class StochasticEstimate:
  """A Monte-Carlo estimate with its standard error.

  Attributes:
    estimate: ``[B]``.
    stderr: ``[B]``, the standard error of ``estimate`` (sample standard
      deviation over ``sqrt(num_samples)``; delta method for square roots;
      ``inf`` when ``num_samples == 1``).
    samples: ``[B, num_samples]``, the per-probe values that were averaged.
  """

  estimate: jax.Array
  stderr: jax.Array
  samples: jax.Array


@struct.dataclass
class PrincipalCurvature:
  """Principal curvatures of the level set ``{x : s(x) = s(x_b)}`` through each example.

  Attributes:
    curvature: ``[B]``, the principal curvature of largest magnitude (signed),
      Dombrowski et al.'s ``lambda_max``; ``0`` where undefined.
    principal_curvatures: ``[B, k]``, the ``k`` of largest magnitude.
    directions: ``[B, k, *F]``, the principal directions (unit, tangent).
    residuals: ``[B, k]``, Ritz residual estimates.
    gradient_norm: ``[B]``, ``||grad s(x_b)||``.
    defined: ``[B]`` bool, ``gradient_norm > 0`` (the level set is a smooth
      hypersurface); curvatures are reported as 0 where it is ``False``.
  """

  curvature: jax.Array
  principal_curvatures: jax.Array
  directions: jax.Array
  residuals: jax.Array
  gradient_norm: jax.Array
  defined: jax.Array


@struct.dataclass
class GradientAngles:
  """Angles between the top Hessian eigenvectors and the gradient.

  Attributes:
    angles: ``[B, k]`` in degrees, in ``[0, 90]`` (eigenvectors have no sign);
      90 means orthogonal. 90 where the gradient is zero.
    cosines: ``[B, k]``, ``|<u_i, g>| / ||g||``.
    eigenvalues: ``[B, k]``, the eigenvalues of the eigenvectors used.
    gradient: ``[B, *F]``, the gradient of the objective.
  """

  angles: jax.Array
  cosines: jax.Array
  eigenvalues: jax.Array
  gradient: jax.Array
