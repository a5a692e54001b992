"""Explanation-attack objectives on saliency maps, one value per example ``[B]``.

All objectives are oriented so that the attacker **maximises** them
(Ghorbani et al.'s ``D``); `manipulation_loss` is a loss (minimised), which
`manipulation_attack` reports negated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rattr_jax.core import map_center_of_mass as _center_of_mass
from rattr_jax.core import to_map

OBJECTIVES = ("topk", "mass_center", "targeted")


def _flat(m):
  return m.reshape(m.shape[0], -1)


def topk_mask(ref_map: jax.Array, k: int) -> jax.Array:
  """0/1 mask of the ``k`` largest entries of each reference map (shape of the map)."""
  flat = _flat(ref_map)
  _, idx = jax.lax.top_k(flat, k)
  mask = jax.vmap(lambda i: jnp.zeros(flat.shape[1], flat.dtype).at[i].set(1.0))(idx)
  return mask.reshape(ref_map.shape)


def topk_objective(m: jax.Array, mask: jax.Array) -> jax.Array:
  """``D = -sum_{i in top-k(I(x))} I_i(x_adv)``: minus the map mass left on the
  original top-k features (Ghorbani et al., 2019)."""
  return -jnp.sum(_flat(m * mask), axis=1)


def mass_center_objective(m: jax.Array, ref_center: jax.Array) -> jax.Array:
  """``D = ||C(I(x_adv)) - C(I(x))||^2`` with ``C`` the centre of mass of a
  ``[B, H, W]`` map in pixels (not rounded, so it is differentiable)."""
  return jnp.sum((_center_of_mass(m) - ref_center) ** 2, axis=-1)


def targeted_objective(m: jax.Array, mask: jax.Array) -> jax.Array:
  """``D = sum_{i in M} I_i(x_adv)``: the map mass inside the target mask ``M``."""
  return jnp.sum(_flat(m * mask), axis=1)


def objective_aux(objective: str, ref_map: jax.Array, k: int, mask) -> jax.Array:
  """What the objective needs from the original map (or the user's mask)."""
  if objective == "topk":
    return topk_mask(ref_map, k)
  if objective == "mass_center":
    return _center_of_mass(ref_map)
  return mask.astype(ref_map.dtype)


def map_objective(objective: str, m: jax.Array, aux: jax.Array) -> jax.Array:
  if objective == "topk":
    return topk_objective(m, aux)
  if objective == "mass_center":
    return mass_center_objective(m, aux)
  return targeted_objective(m, aux)


def attacked_measure(objective: str, m: jax.Array, aux: jax.Array, k: int) -> jax.Array:
  """The measure an attack targets, oriented so the attacker maximises it (``[B]``).

  For ``topk``: minus the top-``k`` intersection of ``m`` with the original map
  (``aux`` is the original top-``k`` mask; ties in ``m`` broken by `lax.top_k`,
  as in `rattr_jax.metrics.topk_intersection`). For ``mass_center`` and
  ``targeted`` the objective is the measure. Ghorbani et al.'s code keeps the
  iterate with the best value of this measure (``select_on="measure"``).
  """
  if objective == "topk":
    return -jnp.sum(_flat(topk_mask(m, k) * aux), axis=1) / k
  return map_objective(objective, m, aux)


def manipulation_loss(m: jax.Array, target_map: jax.Array, probs: jax.Array,
                      probs0: jax.Array, gamma) -> jax.Array:
  """``mean_pixels (h - h_t)^2 + gamma * ||p - p_0||^2``, per example ``[B]``.

  ``m`` and ``target_map`` are maps normalised the same way; ``probs`` and
  ``probs0`` the softmax outputs at ``x_adv`` and ``x`` (Dombrowski et al., 2019).
  """
  map_term = jnp.mean(_flat((m - target_map) ** 2), axis=1)
  out_term = jnp.sum((probs - probs0) ** 2, axis=-1)
  return map_term + gamma * out_term
