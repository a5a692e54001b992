"""The contract table: every attribution method, attack and metric x model x arguments.

In the style of Captum's ``tests/attr/helpers/test_config.py``: one row per
(function, model, settings), and generic tests (``tests/test_contracts.py``)
that run each row through the same checks:

* jit = eager (``jax.disable_jit``);
* batched = per example (row ``i`` of a batch equals the function on
  ``x[i:i+1]``, with the ``i``-th of ``B`` per-example keys where the
  function takes them), where the row says it holds;
* one trace per input shape under an outer `jax.jit` (`chex.assert_max_traces`);
* output dtype follows ``x`` and the leading axis is ``B``.

Every row calls the function through the public protocol
``f(fn, explainer, x, target, *, key, ...)`` (or ``method(fn, x, target, *,
key, ...)`` for attributions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax.testing._problems import TanhMLP


@dataclasses.dataclass(frozen=True)
class Contract:
  """One row of the table.

  Attributes:
    name: row id.
    call: ``call(fn, x, target, key) -> pytree`` whose array leaves have
      leading axis ``B`` (scalars allowed, e.g. ``num_steps``).
    model: ``"vector"`` (inputs ``[B, 6]``) or ``"image"`` (``[B, 5, 5, 1]``).
    per_example: batched = per example holds (deterministic in the batch:
      no draw shaped like the whole batch).
    keys: ``"one"`` (one key for the batch), ``"per_example"`` (``B`` keys
      accepted: example ``i`` gets key ``i``) or ``"none"``.
    rtol: tolerance of the equalities (float32 reductions reorder).
  """

  name: str
  call: Callable[..., Any]
  model: str = "vector"
  per_example: bool = True
  keys: str = "one"
  rtol: float = 1e-4


def model(kind: str):
  """The smooth classifier of a row: a tanh MLP on ``[B, 6]`` or on ``[B, 5, 5, 1]`` images."""
  d = 6 if kind == "vector" else 25
  return TanhMLP(jax.random.key(11), d, 8, 3)


def inputs(kind: str, batch: int = 3, seed: int = 0) -> jax.Array:
  shape = (batch, 6) if kind == "vector" else (batch, 5, 5, 1)
  return jax.random.uniform(jax.random.key(100 + seed), shape, jnp.float32, 0.1, 0.9)


def _table() -> list[Contract]:
  from rattr_jax import attacks, attribution, curvature, explainers, metrics

  grad = attribution.gradient
  ig = explainers.get("integrated_gradients", num_steps=5, chunk_size=2)
  acfg = attacks.AttackConfig(num_steps=2, k=3, epsilon=0.05, step_size=0.02,
                              input_range=(0.0, 1.0))
  mcfg = attacks.ManipulationConfig(num_steps=2, learning_rate=0.01, epsilon=0.05)
  rows = [
      Contract("gradient", lambda f, x, t, k: attribution.gradient(f, x, t, key=k)),
      Contract("input_x_gradient", lambda f, x, t, k: attribution.input_x_gradient(f, x, t, key=k)),
      Contract("integrated_gradients", lambda f, x, t, k: attribution.integrated_gradients(
          f, x, t, key=k, num_steps=6, chunk_size=4)),
      Contract("integrated_gradients_image", lambda f, x, t, k: attribution.integrated_gradients(
          f, x, t, key=k, num_steps=4, method="gausslegendre"), model="image"),
      # SmoothGrad draws one noise array shaped like the whole batch: not per example.
      Contract("smoothgrad", lambda f, x, t, k: attribution.smoothgrad(
          f, x, t, key=k, num_samples=4, chunk_size=3), per_example=False),
      Contract("vargrad", lambda f, x, t, k: attribution.vargrad(
          f, x, t, key=k, num_samples=4), per_example=False),
      Contract("topk_attack", lambda f, x, t, k: attacks.topk_attack(
          f, grad, x, t, key=k, config=acfg.replace(k=4)), model="image"),
      Contract("mass_center_attack", lambda f, x, t, k: attacks.mass_center_attack(
          f, ig, x, t, key=k, config=acfg), model="image"),
      Contract("targeted_attack", lambda f, x, t, k: attacks.targeted_attack(
          f, grad, x, t, key=k, mask=jnp.eye(5), config=acfg), model="image"),
      # Random signs are drawn for the whole batch at once.
      Contract("random_sign_attack", lambda f, x, t, k: attacks.random_sign_attack(
          f, grad, x, t, key=k, config=acfg), model="image", per_example=False),
      Contract("manipulation_attack", lambda f, x, t, k: attacks.manipulation_attack(
          f, grad, x, t, key=k, target_map=jnp.eye(5), config=mcfg), model="image"),
      Contract("max_sensitivity", lambda f, x, t, k: metrics.max_sensitivity(
          f, grad, x, t, key=k, num_samples=4, epsilon=0.1), keys="per_example"),
      Contract("avg_sensitivity", lambda f, x, t, k: metrics.avg_sensitivity(
          f, ig, x, t, key=k, num_samples=4, epsilon=0.1, chunk_size=3), keys="per_example"),
      Contract("local_lipschitz_estimate", lambda f, x, t, k: metrics.local_lipschitz_estimate(
          f, grad, x, t, key=k, num_steps=3, num_restarts=2, epsilon=0.3), keys="per_example"),
      Contract("relative_input_stability", lambda f, x, t, k: metrics.relative_input_stability(
          f, grad, x, t, key=k, num_samples=4, epsilon=0.1), keys="per_example", rtol=1e-3),
      Contract("relative_output_stability", lambda f, x, t, k: metrics.relative_output_stability(
          f, grad, x, t, key=k, num_samples=4, epsilon=0.1), keys="per_example", rtol=1e-3),
      Contract("random_perturbation_similarity",
               lambda f, x, t, k: metrics.random_perturbation_similarity(
                   f, grad, x, t, key=k, num_samples=3, epsilon=0.1), keys="per_example"),
      Contract("infidelity", lambda f, x, t, k: metrics.infidelity(
          f, grad, x, t, key=k, num_samples=4), keys="per_example"),
      Contract("faithfulness_estimate", lambda f, x, t, k: metrics.faithfulness_estimate(
          f, attribution.input_x_gradient, x, t, key=k), keys="none"),
      Contract("insertion", lambda f, x, t, k: metrics.insertion(
          f, ig, x, t, key=k, num_steps=3), keys="none"),
      Contract("deletion", lambda f, x, t, k: metrics.deletion(
          f, grad, x, t, key=k, num_steps=3, reduce="sum"), model="image", keys="none"),
      Contract("explanation_sensitivity", lambda f, x, t, k: curvature.explanation_sensitivity(
          f, grad, x, t, jnp.ones_like(x), key=k), keys="none"),
  ]
  return rows


_CACHE: list[Contract] = []


def contract_table() -> list[Contract]:
  """All rows (built once)."""
  if not _CACHE:
    _CACHE.extend(_table())
  return list(_CACHE)


def batch_leaves(out: Any, batch: int) -> list[np.ndarray]:
  """The array leaves of ``out`` with leading axis ``batch`` (scalars dropped)."""
  return [np.asarray(l) for l in jax.tree_util.tree_leaves(out)
          if np.ndim(l) >= 1 and np.shape(l)[0] == batch]


def targets(fn, x) -> jax.Array:
  return jnp.argmax(fn(x), -1).astype(jnp.int32)
