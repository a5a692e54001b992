"""Ghorbani et al.'s explanation attacks: random sign, top-k, centre of mass, targeted.

Every attack has the signature

    attack(fn, explainer, x, target, *, key, config=None, surrogate=None,
           chunk_size=None, ...) -> AttackResult

* ``fn``: the real model, ``fn(x [B, *F]) -> logits [B, C]``. Labels are
  checked on it at every step and all reported maps are its maps.
* ``explainer``: ``explainer(f, x, target, *, key) -> attribution`` shaped
  like ``x``, for ANY model function ``f`` (`rattr_jax.explainers`): e.g.
  ``rattr_jax.attribution.gradient``, ``explainers.get("integrated_gradients",
  num_steps=20, chunk_size=5)`` or ``explainers.get("smoothgrad",
  num_samples=10)``. The attack calls it on the surrogate to get the gradient
  of the objective and on ``fn`` for the reference map, always with a key
  derived from ``key`` (``fold_in`` of the step: a new noise draw per step for
  SmoothGrad; deterministic explainers ignore it). Build the explainer once
  and reuse it: its static part is a static argument (a new object recompiles;
  two `explainers.get` with equal settings are equal).
* ``surrogate``: the model whose explanation is differentiated, e.g.
  ``rattr_jax.models.surrogate_fn(model, beta=10.)`` for a ReLU ``model``
  (a ReLU network's gradient map is piecewise constant in ``x``, so its
  objective has zero gradient almost everywhere). ``None`` uses ``fn``
  (right for smooth models). It must return logits shaped like ``fn``'s.
* ``key``: PRNG key (required): random signs, stochastic explainers.
* ``chunk_size``: examples attacked at once; larger batches are processed in
  chunks of this size inside the same compiled program.
* ``config``, ``mask``, ``target_map``, ...: keyword-only.

The loop is one jitted `lax.scan`; ``epsilon`` and ``step_size`` are traced,
so sweeping them does not recompile.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rattr_jax import _random
from rattr_jax import _validation as V
from rattr_jax import core
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.attacks import _engine
from rattr_jax.attacks._base import AttackConfig, AttackResult, SELECT_ON
from rattr_jax.attacks._constraints import (check_epsilon, check_input_range,
                                             check_positive_scalar, predicted_label)
from rattr_jax.attacks._objectives import attacked_measure, map_objective, objective_aux, to_map
from rattr_jax.core import NORMALIZATIONS, REDUCTIONS


# ------------------------------------------------------------- validation ----
def check_common(fn, explain, x, target, key, surrogate, *, reduce, normalize, select_on,
                 input_range, num_steps):
  """Validates the arguments shared by all attacks; returns ``(x, t, map_shape)``."""
  x, t = core.prepare(fn, x, target)
  V.check_key(key)
  V.check_positive_int(num_steps, name="num_steps")
  V.check_choice(reduce, REDUCTIONS, name="reduce")
  V.check_choice(normalize, NORMALIZATIONS, name="normalize")
  V.check_choice(select_on, SELECT_ON, name="select_on")
  check_input_range(input_range, x)
  num_classes = V.num_classes_of(fn, x)
  if surrogate is not None:
    c_s = V.num_classes_of(surrogate, x, name="surrogate")
    if c_s != num_classes:
      raise ValueError(f"`surrogate` must return logits shaped like `fn`'s [B, {num_classes}]; "
                       f"got [B, {c_s}].")
  core.check_explainer(explain, fn, x, t, key, allow_precomputed=False, what="an attack")
  map_shape = core.map_shape_of(tuple(x.shape), reduce)
  return x, t, map_shape


def check_mask(mask, map_shape, *, name: str = "mask"):
  """A mask shaped like one map ``map_shape[1:]`` or a batch ``map_shape``."""
  if mask is None:
    raise ValueError(f"`{name}` is required.")
  m = jnp.asarray(mask)
  if tuple(m.shape) == tuple(map_shape[1:]):
    m = jnp.broadcast_to(m[None], map_shape)
  elif tuple(m.shape) != tuple(map_shape):
    raise ValueError(f"`{name}` must have the map's shape {tuple(map_shape[1:])} or "
                     f"{tuple(map_shape)}; got {tuple(m.shape)}.")
  if not (jnp.issubdtype(m.dtype, jnp.floating) or jnp.issubdtype(m.dtype, jnp.integer)
          or m.dtype == jnp.bool_):
    raise ValueError(f"`{name}` must be numeric or bool; got {m.dtype}.")
  if V.is_concrete(m) and jnp.issubdtype(m.dtype, jnp.floating) and not bool(
      jnp.all(jnp.isfinite(m))):
    raise ValueError(f"`{name}` contains NaN or inf.")
  return m


def _check_config(config, x, map_shape, objective):
  if not isinstance(config, AttackConfig):
    raise ValueError(f"`config` must be an AttackConfig; got {type(config).__name__}.")
  check_epsilon(config.epsilon)
  if config.input_range is not None and V.is_concrete(config.epsilon):
    lo, hi = config.input_range
    if float(config.epsilon) > hi - lo:
      raise ValueError(f"`epsilon` ({float(config.epsilon):g}) exceeds the width of "
                       f"`input_range` {tuple(config.input_range)}: every perturbation would "
                       f"be clipped to the box; use an epsilon in input units, e.g. 8/255.")
  check_positive_scalar(config.step_size, name="step_size")
  V.check_positive_int(config.k, name="k")
  n = math.prod(map_shape[1:])
  if objective == "topk" and config.k > n:
    raise ValueError(f"`k` ({config.k}) must not exceed the number of map features ({n}).")
  if objective == "mass_center" and len(map_shape) != 3:
    raise ValueError("the centre-of-mass objective needs image maps [B, H, W]; got maps of "
                     f"shape {map_shape} (use NHWC inputs and a channel `reduce`).")


# ------------------------------------------------------------------ core ----
def _explainers(fn, explain, surrogate, t, key, reduce, normalize):
  k_ref, k_steps = jax.random.split(key)

  def map_of(f, z, step):
    k = jax.random.fold_in(k_steps, step)
    return to_map(explain(f, z, t, key=k), reduce, normalize)

  ref = lambda z: to_map(explain(fn, z, t, key=k_ref), reduce, normalize)
  return ref, map_of


def _signed_core(fn, explain, surrogate, objective, config, key, args):
  x, t, mask, signs = args
  sur = fn if surrogate is None else surrogate
  dtype = x.dtype
  eps = jnp.asarray(config.epsilon, dtype)
  alpha = jnp.asarray(config.step_size, dtype)
  label = predicted_label(fn, x)
  agree = (predicted_label(sur, x) == label) if surrogate is not None else jnp.ones_like(label,
                                                                                       bool)
  ref, map_of = _explainers(fn, explain, surrogate, t, key, config.reduce,
                            config.normalize)
  aux = jax.lax.stop_gradient(objective_aux(objective, ref(x), config.k, mask))

  def sur_value(z, p):
    d = map_objective(objective, map_of(sur, z, p), aux)
    return jnp.sum(d), d

  grad_fn = jax.grad(sur_value, has_aux=True)
  by_measure = config.select_on == "measure"
  score_on_model = (config.select_on == "model" and surrogate is not None) or by_measure

  def score(m):
    return attacked_measure(objective, m, aux, config.k) if by_measure else map_objective(
        objective, m, aux)

  def evaluate(z, p):
    g, d = grad_fn(z, p)
    if score_on_model:
      d = score(map_of(fn, z, p))
    return d, g

  def final_value(z, p):
    return score(map_of(fn if score_on_model else sur, z, p))

  threat = config.threat_model

  def update(z, g, state, p):
    return threat.project(z + alpha * jnp.sign(g), x), state

  start = None
  if signs is not None:
    start = threat.project(x + eps * signs, x)
  out = _engine.run_loop(fn=fn, x=x, label=label, num_steps=config.num_steps,
                         evaluate=evaluate, final_value=final_value, update=update,
                         opt_state=(), start=start)
  out.update(label=label, surrogate_agreement=agree)
  return out


@jit_with_callables(callables=("fn", "explain", "surrogate"),
                    static_argnames=("objective", "chunk_size"))
def _signed_attack(fn, explain, surrogate, objective, x, t, mask, config, key, chunk_size):
  k_start, key = jax.random.split(key)
  signs = _random.rademacher(k_start, x.shape, x.dtype) if config.random_start else None
  run = functools.partial(_signed_core, fn, explain, surrogate, objective, config, key)
  out = _engine.chunked(run, (x, t, mask, signs), chunk_size)
  return AttackResult(num_steps=jnp.asarray(config.num_steps, jnp.int32), **out)


def _random_sign_core(fn, explain, surrogate, objective, config, key, args):
  x, t, mask, signs = args
  eps = jnp.asarray(config.epsilon, x.dtype)
  label = predicted_label(fn, x)
  agree = (predicted_label(surrogate, x) == label) if surrogate is not None else (
      jnp.ones_like(label, bool))
  ref, map_of = _explainers(fn, explain, surrogate, t, key, config.reduce,
                            config.normalize)
  m0 = ref(x)
  aux = objective_aux(objective, m0, config.k, mask)
  measure = (functools.partial(attacked_measure, k=config.k) if config.select_on == "measure"
             else map_objective)
  d0 = measure(objective, m0, aux)
  z = config.threat_model.project(x + eps * signs, x)
  d1 = measure(objective, map_of(fn, z, 0), aux)
  ok = predicted_label(fn, z) == label
  x_adv = jnp.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), z, x)
  return dict(x_adv=x_adv, success=ok & (d1 > d0), objective=jnp.where(ok, d1, d0),
              initial_objective=d0, objective_history=d1[:, None],
              label_kept_history=ok[:, None], best_step=ok.astype(jnp.int32), label=label,
              surrogate_agreement=agree)


@jit_with_callables(callables=("fn", "explain", "surrogate"),
                    static_argnames=("objective", "chunk_size"))
def _random_sign(fn, explain, surrogate, objective, x, t, mask, config, key, chunk_size):
  k_sign, k_rest = jax.random.split(key)
  signs = _random.rademacher(k_sign, x.shape, x.dtype)
  run = functools.partial(_random_sign_core, fn, explain, surrogate, objective, config, k_rest)
  out = _engine.chunked(run, (x, t, mask, signs), chunk_size)
  return AttackResult(num_steps=jnp.asarray(1, jnp.int32), **out)


def _run(objective, fn, explain, x, target, config, key, surrogate, mask, chunk_size,
         random_sign=False):
  if config is None:
    config = AttackConfig()
  if not isinstance(config, AttackConfig):
    raise ValueError(f"`config` must be an AttackConfig; got {type(config).__name__}.")
  x, t, map_shape = check_common(
      fn, explain, x, target, key, surrogate, reduce=config.reduce,
      normalize=config.normalize, select_on=config.select_on,
      input_range=config.input_range, num_steps=config.num_steps)
  _check_config(config, x, map_shape, objective)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  m = check_mask(mask, map_shape) if objective == "targeted" else None
  impl = _random_sign if random_sign else _signed_attack
  return impl(fn, explain, surrogate, objective, x, t, m, config, key, chunk_size)


# ---------------------------------------------------------------- public ----
_COMMON_ARGS = """
  Args:
    fn: the real model, ``[B, *F] -> [B, C]`` logits; labels are checked on it.
    explainer: ``explainer(f, x, target, *, key) -> [B, *F]`` for any model
      ``f``, e.g. ``rattr_jax.attribution.gradient`` or
      ``rattr_jax.explainers.get("integrated_gradients", num_steps=20)``.
    x: inputs ``[B, *F]`` inside ``config.input_range`` (images NHWC).
    target: explained class, an int or an int array ``[B]``.
    key: PRNG key (required): random signs / starts, and the explainer's
      per-call keys (``fold_in`` of the step).
    config: an `AttackConfig` (defaults: Ghorbani's ``epsilon=8/255``,
      ``step_size=0.5/255``, 300 steps).
    surrogate: optional smooth model on the same weights whose explanation
      is differentiated (``rattr_jax.models.surrogate_fn(model, beta=10.)`` for
      ReLU models); ``None`` uses ``fn``.
    chunk_size: examples attacked at once (memory bound); ``None`` = all.
"""

_RETURNS = """
  Returns:
    `AttackResult`: ``x_adv`` is the best label-preserving iterate (``x`` if
    none improved the objective), inside the ``epsilon``-ball and the valid
    range.

  Raises:
    ValueError: ``epsilon < 0``, ``step_size <= 0``, ``k`` larger than the
      number of map features, a wrongly shaped ``mask``, an explainer whose
      output is not shaped like ``x``, a surrogate with other logit shapes,
      ``x`` outside ``input_range``, a missing key.

  References:
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", AAAI
    2019. https://arxiv.org/abs/1710.10547
"""


def _doc(*parts):
  def deco(f):
    f.__doc__ = f.__doc__.rstrip() + "\n" + "".join(parts)
    return f
  return deco


@_doc(_COMMON_ARGS, """    objective: objective used to score the perturbation.
    mask: target mask for ``objective="targeted"``.
""", _RETURNS)
def random_sign_attack(fn, explainer, x: jax.Array, target: Target, *, key: PRNGKey,
                       config: AttackConfig | None = None, surrogate=None,
                       chunk_size: int | None = None, objective: str = "topk",
                       mask=None) -> AttackResult:
  """The random-sign baseline: every feature moves by ``+-epsilon`` at random.

  ``x_adv = clip(x + epsilon * s)`` with Rademacher signs ``s``. It is
  returned whenever the real model keeps its label (otherwise ``x``), so it
  measures how fragile the map is to untargeted noise of the same budget.
  ``objective`` (``"topk"``, ``"mass_center"`` or ``"targeted"`` with
  ``mask``) only scores it, on the real model's map, for comparison with the
  targeted attacks; ``surrogate`` only feeds ``surrogate_agreement``.
  """
  V.check_choice(objective, ("topk", "mass_center", "targeted"), name="objective")
  return _run(objective, fn, explainer, x, target, config, key, surrogate, mask, chunk_size,
              random_sign=True)


@_doc(_COMMON_ARGS, _RETURNS)
def topk_attack(fn, explainer, x: jax.Array, target: Target, *, key: PRNGKey,
                config: AttackConfig | None = None, surrogate=None,
                chunk_size: int | None = None) -> AttackResult:
  """Top-k attack: push the map's mass off the original top-``k`` features.

  Maximises ``D(x_adv) = -sum_{i in top-k(I(x))} I_i(x_adv)`` by signed
  gradient ascent, projected to the ``epsilon``-ball around ``x`` and the valid
  range. **Lower top-k intersection after the attack = stronger attack.**
  """
  return _run("topk", fn, explainer, x, target, config, key, surrogate, None, chunk_size)


@_doc(_COMMON_ARGS, _RETURNS)
def mass_center_attack(fn, explainer, x: jax.Array, target: Target, *, key: PRNGKey,
                       config: AttackConfig | None = None, surrogate=None,
                       chunk_size: int | None = None) -> AttackResult:
  """Centre-of-mass attack: move the map's centre of mass as far as possible.

  Maximises ``D(x_adv) = ||C(I(x_adv)) - C(I(x))||^2`` (pixels^2) for image
  maps ``[B, H, W]``. **Larger centre shift = stronger attack.**
  """
  return _run("mass_center", fn, explainer, x, target, config, key, surrogate, None,
              chunk_size)


@_doc(_COMMON_ARGS, """    mask: target region (see above).
""", _RETURNS)
def targeted_attack(fn, explainer, x: jax.Array, target: Target, *, key: PRNGKey, mask,
                    config: AttackConfig | None = None, surrogate=None,
                    chunk_size: int | None = None) -> AttackResult:
  """Targeted attack: pull the map's mass into a region ``mask``.

  Maximises ``D(x_adv) = sum_{i in M} I_i(x_adv)``. ``mask`` has the shape
  of one map (``[H, W]`` for NHWC images with a channel reduction, ``[*F]``
  otherwise) or of the whole batch of maps; non-binary masks weight the
  features. **More mass in the mask = stronger attack.**
  """
  return _run("targeted", fn, explainer, x, target, config, key, surrogate, mask, chunk_size)
