"""Top eigenpairs (Lanczos) and spectral densities (SLQ) of input Hessians."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rattr_jax import _random
from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax.curvature import _hvp, _lanczos
from rattr_jax.curvature._results import HessianEigs, ParamHessianEigs, SpectralDensity


def check_iters(k: Any, num_iters: Any, dim: int, *, max_dim_name: str = "the input dimension"
                ) -> tuple[int, int]:
  """Validates ``1 <= k <= num_iters <= dim``."""
  num_iters = V.check_positive_int(num_iters, name="num_iters")
  if k is not None:
    k = V.check_positive_int(k, name="k")
    if k > num_iters:
      raise ValueError(f"`k` ({k}) must not exceed `num_iters` ({num_iters}).")
  if num_iters > dim:
    raise ValueError(f"`num_iters` ({num_iters}) must not exceed {max_dim_name} ({dim}).")
  return k, num_iters


def eigs_from_operator(matvec: Callable, v0: jax.Array, key: jax.Array, k: int,
                       num_iters: int, project: Callable | None = None):
  """Runs Lanczos and selects the top-``k`` Ritz pairs both ways."""
  tri = _lanczos.lanczos(matvec, v0, num_iters, key, project)
  theta, s = _lanczos.tridiagonal_eigh(tri)
  alg = _lanczos.select_ritz(tri, theta, s, k, "algebraic")
  mag = _lanczos.select_ritz(tri, theta, s, k, "magnitude")
  return tri, theta, alg, mag


@jit_with_callables(static_argnames=("k", "num_iters", "objective", "mode"))
def _hessian_eigs(fn, x, t, key, k, num_iters, objective, mode):
  bsz = x.shape[0]
  _, op = _hvp.input_hessian_operator(fn, x, t, objective, mode)
  matvec = _hvp.flat_operator(op, x.shape)
  k0, k1 = jax.random.split(key)
  v0 = jax.random.normal(k0, (bsz, _hvp.num_features(x)), x.dtype)
  tri, theta, alg, mag = eigs_from_operator(matvec, v0, k1, k, num_iters)
  shape = (bsz, k) + x.shape[1:]
  return HessianEigs(
      eigenvalues=alg.values, eigenvectors=alg.vectors.reshape(shape),
      magnitude_eigenvalues=mag.values, magnitude_eigenvectors=mag.vectors.reshape(shape),
      residuals=alg.residuals, magnitude_residuals=mag.residuals, ritz_values=theta,
      num_restarts=tri.num_restarts)


def hessian_eigs(fn: Callable, x: jax.Array, target: Target, *, k: int, num_iters: int,
                 key: jax.Array, objective: str = "logit", mode: str = "auto") -> HessianEigs:
  """Top-``k`` eigenpairs of each example's input Hessian by Lanczos.

  ``num_iters`` Lanczos steps with full reorthogonalisation (one batched
  Hessian-vector product each, inside a `lax.fori_loop`) for all examples at
  once; the extreme eigenvalues converge first. Memory is ``O(num_iters *
  n)`` per example. With ``num_iters = n`` the result is exact.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    k: number of eigenpairs, ``k <= num_iters``.
    num_iters: Lanczos steps, ``<= n = prod(F)``.
    key: PRNG key (random start vector and restart vectors).
    objective: ``"logit"`` or ``"loss"`` (see `hvp`).
    mode: ``"auto"``, ``"forward_over_reverse"`` or ``"reverse_over_reverse"``.

  Returns:
    A `HessianEigs`: the top-``k`` by algebraic value and by magnitude, with
    eigenvectors shaped like ``x`` and residual estimates. For a ReLU network
    (logit objective) every eigenvalue is 0, not NaN.

  Raises:
    ValueError: bad ``x``/``target``/``key``, ``k > num_iters``,
      ``num_iters > n``, or an unsupported ``mode``.

  References:
    Lanczos, 1950; Golub & Van Loan, "Matrix Computations", sec. 10.1;
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", AAAI
    2019 (the low-rank input Hessian).
  """
  x, t, mode = _hvp.prepare(fn, x, target, objective, mode)
  k, num_iters = check_iters(k, num_iters, _hvp.num_features(x))
  key = V.check_key(key)
  return _hessian_eigs(fn, x, t, key, k, num_iters, objective, mode)


# ----------------------------------------------------------------------------
# Stochastic Lanczos quadrature.


def slq(matvec: Callable, shape: tuple[int, int], dtype, key: jax.Array, num_samples: int,
        num_iters: int, chunk_size: int | None) -> tuple[jax.Array, jax.Array]:
  """Nodes and weights ``[B, S, m]`` from ``num_samples`` Rademacher probes."""
  keys = jax.random.split(key, num_samples)

  def one(kk):
    kv, kr = jax.random.split(kk)
    v0 = _random.rademacher(kv, shape, dtype)
    tri = _lanczos.lanczos(matvec, v0, num_iters, kr)
    theta, s = _lanczos.tridiagonal_eigh(tri)
    return theta, s[:, 0, :] ** 2

  nodes, weights = jax.lax.map(one, keys, batch_size=chunk_size)     # [S, B, m]
  return jnp.swapaxes(nodes, 0, 1), jnp.swapaxes(weights, 0, 1)


@jit_with_callables(static_argnames=("num_samples", "num_iters", "objective", "mode",
                                     "chunk_size"))
def _spectral_density(fn, x, t, key, num_samples, num_iters, objective, mode, chunk_size):
  _, op = _hvp.input_hessian_operator(fn, x, t, objective, mode)
  n = _hvp.num_features(x)
  nodes, weights = slq(_hvp.flat_operator(op, x.shape), (x.shape[0], n), x.dtype, key,
                       num_samples, num_iters, chunk_size)
  return SpectralDensity(nodes, weights, n)


def spectral_density(fn: Callable, x: jax.Array, target: Target, *, key: jax.Array,
                     num_samples: int = 4, num_iters: int = 30, objective: str = "logit",
                     mode: str = "auto", chunk_size: int | None = None) -> SpectralDensity:
  """Stochastic Lanczos quadrature (SLQ) of each example's Hessian spectrum.

  Each of ``num_samples`` Rademacher probes runs ``num_iters`` Lanczos steps;
  the Ritz values and squared first eigenvector components are a Gauss
  quadrature of the spectral measure. Use `SpectralDensity.density` for a
  smoothed density and `SpectralDensity.trace` for ``tr f(H)``.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    key: PRNG key.
    num_samples: random probes per example (``> 0``).
    num_iters: Lanczos steps per probe, ``<= n``.
    objective: ``"logit"`` or ``"loss"``.
    mode: as in `hvp`.
    chunk_size: probes processed at once (memory bound); ``None`` for all.

  Returns:
    A `SpectralDensity` with ``nodes``/``weights`` ``[B, num_samples,
    num_iters]``.

  References:
    Ubaru, Chen, Saad, "Fast Estimation of tr(f(A)) via Stochastic Lanczos
    Quadrature", SIAM J. Matrix Anal. Appl. 2017; Ghorbani, Krishnan, Xiao,
    "An Investigation into Neural Net Optimization via Hessian Eigenvalue
    Density", ICML 2019.
  """
  x, t, mode = _hvp.prepare(fn, x, target, objective, mode)
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  _, num_iters = check_iters(None, num_iters, _hvp.num_features(x))
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  key = V.check_key(key)
  return _spectral_density(fn, x, t, key, num_samples, num_iters, objective, mode, chunk_size)


# ----------------------------------------------------------------------------
# Parameter Hessian.


@jit_with_callables(callables=("apply",),
                    static_argnames=("k", "num_iters", "objective", "mode"))
def _param_hessian_eigs(apply, params, x, t, key, k, num_iters, objective, mode):
  flat, unravel = ravel_pytree(params)
  _, op = _hvp.linearize_gradient(_hvp.param_objective(apply, x, t, objective), params, mode)

  def matvec(q):  # [1, n] -> [1, n]
    return ravel_pytree(op(unravel(q[0])))[0][None]

  k0, k1 = jax.random.split(key)
  v0 = jax.random.normal(k0, (1, flat.shape[0]), flat.dtype)
  _, theta, alg, mag = eigs_from_operator(matvec, v0, k1, k, num_iters)
  vecs = jax.vmap(unravel)
  return ParamHessianEigs(
      eigenvalues=alg.values[0], eigenvectors=vecs(alg.vectors[0]),
      magnitude_eigenvalues=mag.values[0], magnitude_eigenvectors=vecs(mag.vectors[0]),
      residuals=alg.residuals[0], magnitude_residuals=mag.residuals[0], ritz_values=theta[0])


def param_hessian_eigs(apply: Callable, params: Any, x: jax.Array, target: Target, *, k: int,
                       num_iters: int, key: jax.Array, objective: str = "loss",
                       mode: str = "auto") -> ParamHessianEigs:
  """Top-``k`` eigenpairs of the parameter Hessian of the batch-mean objective.

  The loss-landscape Hessian (sharpness) used by curvature regularisers;
  Lanczos as in `hessian_eigs` on the flattened parameters.

  Args:
    apply: ``apply(params, x) -> logits [B, C]``.
    params: pytree of floating arrays.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    k: number of eigenpairs, ``<= num_iters``.
    num_iters: Lanczos steps, ``<=`` the number of parameters.
    key: PRNG key.
    objective: ``"loss"`` (default) or ``"logit"``.
    mode: as in `hvp`.

  Returns:
    A `ParamHessianEigs`.
  """
  x, t, mode = _hvp.prepare_params(apply, params, x, target, objective, mode)
  n = sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(params))
  k, num_iters = check_iters(k, num_iters, n, max_dim_name="the number of parameters")
  key = V.check_key(key)
  return _param_hessian_eigs(apply, params, x, t, key, k, num_iters, objective, mode)
