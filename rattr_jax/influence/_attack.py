"""Ghorbani et al.'s influence attack: change which training points explain a prediction."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from rattr_jax import _validation as V
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.attacks import AttackConfig, AttackResult, attack_loop, check_positive_scalar
from rattr_jax.core import check_epsilon, check_input_range, chunk_examples, predicted_label
from rattr_jax.influence._influence import InfluenceState, influence_from_features


def influence_attack_config(*, epsilon: float = 8.0 / 255.0, **kwargs) -> AttackConfig:
  """Ghorbani et al.'s setting: ONE signed step of size ``epsilon`` (8/255),
  scored on the top ``k = 5`` training points. Override with ``kwargs``
  (e.g. ``num_steps=20, step_size=1/255`` for an iterative attack)."""
  settings = dict(epsilon=epsilon, step_size=epsilon, num_steps=1, k=5)
  settings.update(kwargs)
  return AttackConfig(**settings)


@struct.dataclass
class InfluenceAttackResult:
  """Result of `influence_attack`.

  Attributes:
    attack: the `AttackResult` (objective: minus the summed helpfulness of the
      original top-``k`` training points; higher = stronger attack).
    topk_overlap: ``[B]`` fraction of the original top-``k`` most helpful
      training points still in the top ``k`` after the attack. **Lower =
      stronger attack.**
    scores_before: ``[B, N]`` influence ``I`` at ``x``.
    scores_after: ``[B, N]`` influence ``I`` at ``x_adv``.
  """

  attack: AttackResult
  topk_overlap: jax.Array
  scores_before: jax.Array
  scores_after: jax.Array


def _overlap(a, b, k):
  n = a.shape[1]
  ia = jax.lax.top_k(-a, k)[1]
  ib = jax.lax.top_k(-b, k)[1]
  ma = jax.vmap(lambda i: jnp.zeros(n).at[i].set(1.0))(ia)
  mb = jax.vmap(lambda i: jnp.zeros(n).at[i].set(1.0))(ib)
  return jnp.sum(ma * mb, axis=1) / k


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _influence_attack(state, x, t, config, chunk_size):
  logits_fn = state.logits
  k = config.k

  def core(args):
    xc, tc = args
    label = predicted_label(logits_fn, xc)
    s0 = influence_from_features(state, state.features_fn(xc), tc)
    top = jax.nn.one_hot(jax.lax.top_k(-s0, k)[1], s0.shape[1], dtype=xc.dtype).sum(1)
    top = jax.lax.stop_gradient(top)
    eps = jnp.asarray(config.epsilon, xc.dtype)
    alpha = jnp.asarray(config.step_size, xc.dtype)

    def value(z):
      # D = -(helpfulness of the original top-k) = sum_{i in top} I_i.
      i = influence_from_features(state, state.features_fn(z), tc)
      d = jnp.sum(i * top, axis=1)
      return jnp.sum(d), d

    grad_fn = jax.grad(value, has_aux=True)

    def evaluate(z, p):
      g, d = grad_fn(z)
      return d, g

    def update(z, g, st, p):
      return config.threat_model.project(z + alpha * jnp.sign(g), xc), st

    out = attack_loop(fn=logits_fn, x=xc, label=label, num_steps=config.num_steps,
                           evaluate=evaluate, final_value=lambda z, p: value(z)[1],
                           update=update, opt_state=())
    s1 = influence_from_features(state, state.features_fn(out["x_adv"]), tc)
    out.update(label=label, surrogate_agreement=jnp.ones_like(label, bool))
    return out, s0, s1, _overlap(s0, s1, k)

  out, s0, s1, ov = chunk_examples(core, (x, t), chunk_size)
  res = AttackResult(num_steps=jnp.asarray(config.num_steps, jnp.int32), **out)
  return InfluenceAttackResult(res, ov, s0, s1)


def influence_attack(state: InfluenceState, x, target: Target, *, key: PRNGKey,
                     config: AttackConfig | None = None,
                     chunk_size: int | None = None) -> InfluenceAttackResult:
  """Perturb ``x`` so that other training points become the most influential.

  Maximises ``D(x_adv) = sum_{i in T} I(z_i, (x_adv, target))`` where ``T``
  are the ``k`` most helpful training points of the original ``x``, i.e.
  makes them less helpful, by signed steps projected to the ``epsilon``-ball
  and the valid range, keeping the model's label (checked every step; the
  best label-preserving iterate is returned). The derivative goes through
  the features ``phi(x_adv)`` and the test gradient; the Hessian and the
  training directions stay fixed (Ghorbani et al. step in feature space and
  pull back through the network; here one VJP through ``phi`` does both).
  ReLU features need no surrogate: the objective depends on ``phi``'s first
  derivative only.

  Args:
    state: a fitted `InfluenceState` (`fit_influence`).
    x: test inputs ``[B, *F]`` inside ``config.input_range``.
    target: the test label whose loss defines influence (int or ``[B]``),
      usually the predicted class.
    config: an `AttackConfig`; default `influence_attack_config()` (one step
      of ``8/255``, ``k = 5``, as in the paper).
    key: PRNG key (required for API uniformity; the attack is deterministic).
    chunk_size: test inputs attacked at once (memory bound).

  Returns:
    `InfluenceAttackResult` with the top-``k`` overlap before/after.

  References:
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", AAAI
    2019, Section "Influence functions".
  """
  if config is None:
    config = influence_attack_config()
  if not isinstance(config, AttackConfig):
    raise ValueError(f"`config` must be an AttackConfig; got {type(config).__name__}.")
  if not isinstance(state, InfluenceState):
    raise ValueError(f"`state` must be an InfluenceState; got {type(state).__name__}.")
  x = V.check_batch(x)
  t = V.check_target(target, x.shape[0], state.w_aug.shape[1])
  V.check_key(key)
  check_epsilon(config.epsilon)
  check_positive_scalar(config.step_size, name="step_size")
  V.check_positive_int(config.num_steps, name="num_steps")
  V.check_positive_int(config.k, name="k")
  if config.k > state.num_train:
    raise ValueError(f"`k` ({config.k}) must not exceed the number of training points "
                     f"({state.num_train}).")
  check_input_range(config.input_range, x)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  return _influence_attack(state, x, t, config, chunk_size)
