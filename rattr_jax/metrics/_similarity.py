"""Similarity of two saliency maps, one value per example ``[B]``.

All functions take two maps ``a, b`` of the same shape ``[B, ...]`` and compare
them example by example over the flattened non-batch axes.
"""

from __future__ import annotations

import functools

import dm_pix
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax.core import map_center_of_mass
from rattr_jax.core import pearson_rows

_TINY = 1e-12


def _pair(a, b, *, min_rank: int = 2):
  a = V.check_batch(a, name="a", min_rank=min_rank)
  b = V.check_batch(b, name="b", min_rank=min_rank)
  V.check_same_shape(a, b, names=("a", "b"))
  return a, b


def _flat(m):
  return m.reshape(m.shape[0], -1)


# ----------------------------------------------------------------- top-k ----
@functools.partial(jax.jit, static_argnames=("k",))
def _topk_intersection(a, b, k):
  a, b = _flat(a), _flat(b)
  n = a.shape[1]

  def one(u, v):
    _, iu = jax.lax.top_k(u, k)
    _, iv = jax.lax.top_k(v, k)
    mu = jnp.zeros((n,), jnp.int32).at[iu].set(1)
    mv = jnp.zeros((n,), jnp.int32).at[iv].set(1)
    return jnp.sum(mu * mv).astype(u.dtype) / k

  return jax.vmap(one)(a, b)


def topk_intersection(a: Float[Array, "B ..."], b: Float[Array, "B ..."],
                      k: int) -> Float[Array, "B"]:
  """Fraction of the top-``k`` features of ``a`` that are also top-``k`` in ``b``.

  ``|top_k(a) ∩ top_k(b)| / k``. Ties are broken towards the lower flat index
  (`jax.lax.top_k`). **Higher is more similar** (1 = same top-k set).

  Args:
    a, b: maps ``[B, ...]`` of equal shape.
    k: number of top features, ``1 <= k <= prod(a.shape[1:])``.

  Returns:
    ``[B]`` values in [0, 1].

  References:
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", 2019.
  """
  a, b = _pair(a, b)
  n = int(a[0].size)
  k = V.check_positive_int(k, name="k")
  if k > n:
    raise ValueError(f"`k` ({k}) must not exceed the number of features ({n}).")
  return _topk_intersection(a, b, k)


# ------------------------------------------------------------- rank-based ----
def average_ranks(v: jax.Array) -> jax.Array:
  """1-based ranks of a vector with ties given their average rank (scipy's
  ``rankdata(method='average')``)."""
  s = jnp.sort(v)
  lo = jnp.searchsorted(s, v, side="left")
  hi = jnp.searchsorted(s, v, side="right")
  return (lo + hi + 1).astype(v.dtype) / 2


_pearson_flat = pearson_rows


@jax.jit
def _spearman(a, b):
  ra = jax.vmap(average_ranks)(_flat(a))
  rb = jax.vmap(average_ranks)(_flat(b))
  return _pearson_flat(ra, rb)


def spearman(a: Float[Array, "B ..."], b: Float[Array, "B ..."]) -> Float[Array, "B"]:
  """Spearman rank correlation between two maps, per example.

  Pearson correlation of average ranks (ties share their mean rank), equal to
  ``scipy.stats.spearmanr``. **Higher is more similar** (1 = same ordering).

  Constant maps: a correlation with a constant map is undefined, and the
  value is NaN (as in scipy), the same for `spearman`, `pearson` and
  `kendall_tau`; ``jnp.isnan`` of the result flags those examples, and
  summaries should count them apart (the ``rattr`` tables show "–" and
  average over the defined ones).

  Args:
    a, b: maps ``[B, ...]`` of equal shape.

  Returns:
    ``[B]`` values in [-1, 1]; NaN where a map is constant.
  """
  a, b = _pair(a, b)
  return _spearman(a, b)


@jax.jit
def _kendall_tau(a, b):
  a, b = _flat(a), _flat(b)
  n = a.shape[1]
  acc = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32

  def one(u, v):
    def row(i):
      su = jnp.sign(u[i] - u)
      sv = jnp.sign(v[i] - v)
      return (jnp.sum((su * sv).astype(jnp.int32)), jnp.sum((su == 0).astype(jnp.int32)),
              jnp.sum((sv == 0).astype(jnp.int32)))

    s, tu, tv = jax.lax.map(row, jnp.arange(n), batch_size=min(n, 256))
    s = jnp.sum(s.astype(acc)) / 2.0  # concordant - discordant
    n0 = n * (n - 1) / 2.0
    n1 = (jnp.sum(tu.astype(acc)) - n) / 2.0
    n2 = (jnp.sum(tv.astype(acc)) - n) / 2.0
    return (s / jnp.sqrt((n0 - n1) * (n0 - n2))).astype(u.dtype)

  return jax.lax.map(lambda uv: one(*uv), (a, b))


def kendall_tau(a: Float[Array, "B ..."], b: Float[Array, "B ..."]) -> Float[Array, "B"]:
  """Kendall's tau-b between two maps, per example (``scipy.stats.kendalltau``).

  ``(n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))`` with tie corrections. Costs
  ``O(n^2)`` time and ``O(256 n)`` memory per example for ``n`` features.
  **Higher is more similar.**

  Args:
    a, b: maps ``[B, ...]`` of equal shape.

  Returns:
    ``[B]`` values in [-1, 1]; NaN where a map is constant (the convention of
    `spearman`).
  """
  a, b = _pair(a, b)
  return _kendall_tau(a, b)


# --------------------------------------------------------- centre of mass ----
_center_of_mass = jax.jit(map_center_of_mass)


def center_of_mass(saliency: Float[Array, "B H W"]) -> Float[Array, "B 2"]:
  """Centre of mass ``(row, col)`` of a non-negative map ``[B, H, W]``, in pixels.

  ``C = sum_ij m_ij (i, j) / sum_ij m_ij``. Unlike Ghorbani's code we do not
  round to integers, so the centre is differentiable (the attack uses it).

  Returns:
    ``[B, 2]`` coordinates.
  """
  m = V.check_batch(saliency, name="saliency", min_rank=3, max_rank=3)
  return _center_of_mass(m)


def center_shift(a: Float[Array, "B H W"], b: Float[Array, "B H W"]) -> Float[Array, "B"]:
  """Euclidean distance between the centres of mass of two maps, in pixels.

  **Lower is more similar** (0 = same centre).

  References:
    Ghorbani, Abid, Zou, 2019 (centre-of-mass dislocation).
  """
  a, b = _pair(a, b, min_rank=3)
  if a.ndim != 3:
    raise ValueError(f"`a` must be a map [B, H, W]; got shape {tuple(a.shape)}.")
  return jnp.linalg.norm(_center_of_mass(a) - _center_of_mass(b), axis=-1)


# ---------------------------------------------------------- value-based ----
def pearson(a: Float[Array, "B ..."], b: Float[Array, "B ..."]) -> Float[Array, "B"]:
  """Pearson correlation of the flattened maps. **Higher is more similar.**

  Returns:
    ``[B]`` values in [-1, 1]; NaN where a map is constant (the convention of
    `spearman`).
  """
  a, b = _pair(a, b)
  return jax.jit(lambda u, v: _pearson_flat(_flat(u), _flat(v)))(a, b)


def cosine_similarity(a: Float[Array, "B ..."], b: Float[Array, "B ..."]) -> Float[Array, "B"]:
  """Cosine of the angle between the flattened maps. **Higher is more similar.**"""
  a, b = _pair(a, b)

  def f(u, v):
    u, v = _flat(u), _flat(v)
    return jnp.sum(u * v, -1) / (jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1) + _TINY)

  return jax.jit(f)(a, b)


def mse(a: Float[Array, "B ..."], b: Float[Array, "B ..."]) -> Float[Array, "B"]:
  """Mean squared difference of the maps. **Lower is more similar.**"""
  a, b = _pair(a, b)
  return jax.jit(lambda u, v: jnp.mean((_flat(u) - _flat(v)) ** 2, axis=-1))(a, b)


def _unit_range(m):
  axes = tuple(range(1, m.ndim))
  lo = jnp.min(m, axis=axes, keepdims=True)
  hi = jnp.max(m, axis=axes, keepdims=True)
  return (m - lo) / (hi - lo + _TINY)


@jax.jit
def _ssim(a, b):
  if a.ndim == 3:
    a, b = a[..., None], b[..., None]
  return dm_pix.ssim(_unit_range(a), _unit_range(b), max_val=1.0, filter_size=7,
                     filter_sigma=1.5)


def ssim(a: Float[Array, "B H W"], b: Float[Array, "B H W"]) -> Float[Array, "B"]:
  """Structural similarity of two maps (dm_pix, 7x7 Gaussian window, sigma 1.5).

  Each map is first min-max scaled to [0, 1] on its own, so SSIM compares
  structure, not scale. **Higher is more similar** (1 = identical).

  Args:
    a, b: maps ``[B, H, W]`` or ``[B, H, W, C]`` with ``H, W >= 7``.

  References:
    Wang et al., "Image quality assessment: from error visibility to structural
    similarity", 2004; used by Dombrowski et al., 2019.
  """
  a, b = _pair(a, b, min_rank=3)
  if a.ndim > 4:
    raise ValueError(f"`a` must be [B, H, W] or [B, H, W, C]; got {tuple(a.shape)}.")
  if a.shape[1] < 7 or a.shape[2] < 7:
    raise ValueError(f"`a` must be at least 7x7 for SSIM; got {tuple(a.shape)}.")
  return _ssim(a, b)
