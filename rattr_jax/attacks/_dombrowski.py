"""Dombrowski et al.'s manipulation attack, and softplus-beta surrogate families.

``manipulation_attack(fn, explainer, x, target, *, key, target_map, config=None,
surrogate=None, surrogate_family=None, chunk_size=None)`` follows the
signature of the other attacks (see `rattr_jax.attacks._ghorbani`) and adds
the (keyword-only) target map.

The beta schedule needs a surrogate whose softplus ``beta`` is a *traced*
value (so the whole schedule runs in one compiled loop). A model's
`Activation` is static, so instead pass ``surrogate_family(x, beta) ->
logits``, a model function with ``beta`` as an argument.
`softplus_family(model)` builds one for any rattr_jax / NNX model that stores
its nonlinearity in ``activation`` attributes; for your own code write
``lambda x, beta: my_apply(params, x, beta)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.attacks import _engine
from rattr_jax.attacks._base import AttackResult, ManipulationConfig
from rattr_jax.attacks._constraints import check_epsilon, check_positive_scalar, predicted_label
from rattr_jax.attacks._ghorbani import check_common, check_mask
from rattr_jax.attacks._objectives import manipulation_loss, to_map
from rattr_jax.core import normalize_map


class _SoftplusBeta:
  """softplus_beta(z) = log(1 + exp(beta z)) / beta with a possibly traced beta."""

  def __init__(self, beta):
    self.beta = beta

  def __call__(self, z):
    return jax.nn.softplus(self.beta * z) / self.beta


def softplus_family(model: nnx.Module, *, conv_impl: str | None = None):
  """``family(x, beta) -> logits``: ``model`` with every activation replaced by
  softplus-beta, on the same weights, with ``beta`` an ordinary (traceable)
  argument.

  ``family(x, b)`` equals ``rattr_jax.models.surrogate_fn(model, beta=b)(x)``
  but ``b`` may be a traced value, so a beta schedule runs inside one
  compiled loop. Works for models that keep their nonlinearity in attributes
  named ``activation`` (all rattr_jax models), in inference mode.

  Args:
    model: an NNX module mapping ``[B, *F]`` to ``[B, C]``.
    conv_impl: optional convolution-implementation override.
  """
  from rattr_jax.models import view
  graphdef, state = nnx.split(view(model, conv_impl=conv_impl))

  def family(x, beta):
    m = nnx.merge(graphdef, state)
    act = _SoftplusBeta(beta)
    for _, mod in nnx.iter_modules(m):
      if hasattr(mod, "activation"):
        object.__setattr__(mod, "activation", act)
    return m(x)

  return family


def beta_schedule(beta_start, beta_end, num_steps: int) -> jax.Array:
  """Geometric schedule ``beta_p = beta_start (beta_end / beta_start)^(p / (P - 1))``."""
  p = jnp.arange(num_steps, dtype=jnp.result_type(float))
  frac = p / max(num_steps - 1, 1)
  return beta_start * (beta_end / beta_start) ** frac


def _manip_core(fn, explain, surrogate, family, config, key, args):
  x, t, tmap = args
  dtype = x.dtype
  eps = jnp.asarray(config.epsilon, dtype)
  gamma = jnp.asarray(config.gamma, dtype)
  label = predicted_label(fn, x)
  probs0 = jax.nn.softmax(fn(x), axis=-1)
  tmap = normalize_map(tmap, config.normalize)
  k_steps = jax.random.split(key)[1]
  if family is not None:
    betas = beta_schedule(jnp.asarray(config.beta_start, dtype),
                          jnp.asarray(config.beta_end, dtype), config.num_steps + 1)
    sur_at = lambda p: (lambda z: family(z, betas[p]))
  else:
    sur = fn if surrogate is None else surrogate
    sur_at = lambda p: sur
  agree = predicted_label(sur_at(0), x) == label

  def loss_of(f, z, p):
    k = jax.random.fold_in(k_steps, p)
    m = to_map(explain(f, z, t, key=k), config.reduce, config.normalize)
    return manipulation_loss(m, tmap, jax.nn.softmax(f(z), axis=-1), probs0, gamma)

  def neg_total(z, p):
    loss = loss_of(sur_at(p), z, p)
    return -jnp.sum(loss), -loss

  grad_fn = jax.grad(neg_total, has_aux=True)
  score_on_model = config.select_on in ("model", "measure") and (surrogate is not None or
                                                    family is not None)

  def evaluate(z, p):
    g, d = grad_fn(z, p)
    if score_on_model:
      d = -loss_of(fn, z, p)
    return d, -g  # gradient of the loss (minimised by Adam)

  def final_value(z, p):
    return -loss_of(fn if score_on_model else sur_at(p), z, p)

  opt = optax.adam(jnp.asarray(config.learning_rate, dtype))
  threat = config.threat_model

  def update(z, g, state, p):
    upd, state = opt.update(g, state, z)
    return threat.project(z + upd, x), state

  out = _engine.run_loop(fn=fn, x=x, label=label, num_steps=config.num_steps,
                         evaluate=evaluate, final_value=final_value, update=update,
                         opt_state=opt.init(x))
  out.update(label=label, surrogate_agreement=agree)
  return out


@jit_with_callables(callables=("fn", "explain", "surrogate"),
                    static_argnames=("family", "chunk_size"))
def _manipulation(fn, explain, surrogate, family, x, t, tmap, config, key, chunk_size):
  run = functools.partial(_manip_core, fn, explain, surrogate, family, config, key)
  out = _engine.chunked(run, (x, t, tmap), chunk_size)
  return AttackResult(num_steps=jnp.asarray(config.num_steps, jnp.int32), **out)


def manipulation_attack(fn, explainer, x: jax.Array, target: Target, *, key: PRNGKey,
                        target_map, config: ManipulationConfig | None = None,
                        surrogate=None, surrogate_family=None,
                        chunk_size: int | None = None) -> AttackResult:
  """Manipulate the explanation towards an arbitrary target map, keeping the output.

  Minimises, with Adam on the input,
  ``L = mean_pixels (h(x_adv) - h_t)^2 + gamma * ||softmax(x_adv) - softmax(x)||^2``
  where ``h`` is the normalised map of ``explain`` on the surrogate and
  ``h_t`` the target map normalised the same way; each iterate is projected to
  the optional ``epsilon``-ball and the valid range. As in every attack the
  best label-preserving iterate (lowest loss) is returned, and
  ``AttackResult.objective`` is **minus** the loss (higher = closer to the
  target map).

  Args:
    fn: the real model, ``[B, *F] -> [B, C]``; labels are checked on it and
      ``softmax(fn(x))`` is the output to preserve.
    explainer: ``explainer(f, x, target, *, key)`` for any model ``f`` (see
      `topk_attack`).
    x: inputs ``[B, *F]`` inside ``config.input_range``.
    target: explained class, an int or ``[B]``.
    target_map: target map, shaped like one map (``[H, W]`` for NHWC images)
      or the batch of maps; e.g. another image's map, or `frame_map`.
    config: a `ManipulationConfig` (default: Adam lr 2e-4, 1500 steps, no
      ball, ``gamma = 10``).
    key: PRNG key (required).
    surrogate: optional smooth model ``surrogate(x) -> logits`` on the same
      weights; ``None`` uses ``fn``.
    surrogate_family: optional ``family(x, beta) -> logits`` (e.g.
      `softplus_family(model)`); then step ``p`` uses
      ``beta_p`` from the geometric schedule ``config.beta_start ->
      config.beta_end`` (Dombrowski's code: 10 -> 100). Exclusive with
      ``surrogate``.
    chunk_size: examples attacked at once; ``None`` = all.

  Returns:
    `AttackResult`.

  Raises:
    ValueError: bad ``epsilon``/``learning_rate``/``gamma``/betas, a
      target map of the wrong shape, an explainer output not shaped like ``x``,
      a surrogate with other logit shapes.

  References:
    Dombrowski et al., "Explanations can be manipulated and geometry is to
    blame", NeurIPS 2019. https://arxiv.org/abs/1906.07983
  """
  if config is None:
    config = ManipulationConfig()
  if not isinstance(config, ManipulationConfig):
    raise ValueError(f"`config` must be a ManipulationConfig; got {type(config).__name__}.")
  if surrogate is not None and surrogate_family is not None:
    raise ValueError("pass either `surrogate` or `surrogate_family`, not both.")
  fam_fn = None
  if surrogate_family is not None:
    if not callable(surrogate_family):
      raise ValueError("`surrogate_family` must be callable family(x, beta) -> logits.")
    check_positive_scalar(config.beta_start, name="beta_start")
    check_positive_scalar(config.beta_end, name="beta_end")
    beta0 = config.beta_start
    fam_fn = lambda z: surrogate_family(z, beta0)
  x, t, map_shape = check_common(
      fn, explainer, x, target, key, surrogate if fam_fn is None else fam_fn,
      reduce=config.reduce, normalize=config.normalize, select_on=config.select_on,
      input_range=config.input_range, num_steps=config.num_steps)
  check_epsilon(config.epsilon, allow_inf=True)
  check_positive_scalar(config.learning_rate, name="learning_rate")
  if V.is_concrete(config.gamma):
    V.check_nonnegative(config.gamma, name="gamma")
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  tmap = check_mask(target_map, map_shape, name="target_map").astype(x.dtype)
  return _manipulation(fn, explainer, surrogate, surrogate_family, x, t, tmap, config, key,
                       chunk_size)
