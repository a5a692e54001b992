"""SENN stability: the local Lipschitz estimate of the relevances against the concepts.

``L(x) = max_{x' in B_eps(x)} ||theta_y(x) - theta_y(x')||_2 / ||h(x) - h(x')||_2``
(Alvarez-Melis & Jaakkola 2018, Sec. 5), with ``y`` the prediction at ``x``
(the authors' code explains the predicted class and drops the bias concept).
The maximum is estimated by `rattr_jax.metrics.senn_local_lipschitz_estimate`
(projected gradient ascent with restarts, or sampling). Post-hoc explainers
are scored with the same estimator through
`rattr_jax.metrics.local_lipschitz_estimate` (``theta`` -> attribution map,
``h`` -> ``x``); ``denominator="input"`` gives SENN's ``theta`` against ``x``
for an apples-to-apples comparison with them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax.senn._conceptizers import IdentityConceptizer

DENOMINATORS = ("concepts", "input")


def _has_bias(model) -> bool:
  return isinstance(model.conceptizer, IdentityConceptizer) and model.conceptizer.bias


def _theta_of(graphdef, state, yhat, drop_bias, x):
  """``theta_{yhat}(x)``; ``x`` may hold ``S`` copies of the batch, sample-major."""
  m = nnx.merge(graphdef, state)
  theta = m.relevances(x)
  t = jnp.tile(yhat, x.shape[0] // yhat.shape[0])
  rel = m.aggregator.class_relevance(theta, t)
  return rel[:, :-1] if drop_bias else rel


def _h_of(graphdef, state, drop_bias, x):
  h = nnx.merge(graphdef, state).concepts(x)[0]
  return h[:, :-1] if drop_bias else h


def _flat_input(x):
  return x.reshape(x.shape[0], -1)


def predicted_class(model, x: jax.Array) -> jax.Array:
  """``argmax`` of the SENN's logits ``[B]``."""
  graphdef, state = nnx.split(model)
  return _predict(graphdef, state, x)


@jax.jit
def _predict(graphdef, state, x):
  return jnp.argmax(nnx.merge(graphdef, state)(x), axis=-1).astype(jnp.int32)


def senn_stability(model, x: Float[Array, "B ..."], *, key: jax.Array, epsilon: float = 1.0,
                   denominator: str = "concepts", target: Any = None,
                   method: str = "gradient_ascent", num_steps: int = 20,
                   num_restarts: int = 2, num_samples: int = 50, norm: str = "l2",
                   input_range=(0.0, 1.0), chunk_size: int | None = None) -> Float[Array, "B"]:
  """Local Lipschitz estimate of a SENN's relevances. **Lower is better.**

  Args:
    model: a `rattr_jax.senn.SENN`.
    x: inputs ``[B, *F]``.
    key: PRNG key (restarts / samples).
    epsilon: radius of the ball around ``x`` (input units).
    denominator: ``"concepts"`` (``||h(x) - h(x')||``, the paper's SENN
      metric) or ``"input"`` (``||x - x'||``, comparable with post-hoc maps).
    target: class whose relevances are compared; default the prediction.
    method, num_steps, num_restarts, num_samples, norm, input_range, chunk_size: see
      `rattr_jax.metrics.local_lipschitz_estimate`.

  Returns:
    ``[B]`` estimates (lower bounds of the local Lipschitz constant).

  References:
    Alvarez-Melis, Jaakkola, NeurIPS 2018. https://arxiv.org/abs/1806.07538
  """
  from rattr_jax.metrics import senn_local_lipschitz_estimate
  x = V.check_batch(x)
  V.check_choice(denominator, DENOMINATORS, name="denominator")
  if target is None:
    t = predicted_class(model, x)
  else:
    t = V.check_target(target, x.shape[0], model.num_classes)
  graphdef, state = nnx.split(model)
  drop = _has_bias(model)
  theta_fn = jax.tree_util.Partial(_theta_of, graphdef, state, t, drop)
  if denominator == "concepts":
    h_fn = jax.tree_util.Partial(_h_of, graphdef, state, drop)
  else:
    h_fn = jax.tree_util.Partial(_flat_input)
  return senn_local_lipschitz_estimate(
      theta_fn, h_fn, x, key=key, epsilon=epsilon, method=method, num_steps=num_steps,
      num_restarts=num_restarts, num_samples=num_samples, norm=norm, input_range=input_range,
      chunk_size=chunk_size)
