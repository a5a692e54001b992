"""Adversarial-training losses (FGSM fast AT, PGD-AT, TRADES) and their inner attacks.

The inner attacks are l-inf prediction attacks that run inside `lax.fori_loop`
and return a constant (`stop_gradient`) adversarial input, so a training loss
differentiates only through the outer evaluation ``fn(x_adv)``. Pass
``attack_fn`` (the model in inference mode, BatchNorm with running statistics)
to run the attack on a different function than the one trained;
`rattr_jax.training` does this for models with BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _random
from rattr_jax import _validation as V
from rattr_jax import core
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax.regularizers import _common


def _project(x_adv, x, epsilon, input_range):
  """The L-inf `core.ThreatModel` projection (radius ``epsilon``, box ``input_range``)."""
  return core.ThreatModel(epsilon=epsilon, norm="linf", input_range=input_range).project(x_adv, x)


def _ce_grad(fn, z, t):
  return jax.grad(lambda w: jnp.sum(_common.cross_entropy(fn(w), t)))(z)


def _kl_rows(p_logits, q_logits):
  """Per-example ``KL(softmax(p) || softmax(q))`` ``[B]``."""
  logp = jax.nn.log_softmax(p_logits, axis=-1)
  logq = jax.nn.log_softmax(q_logits, axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


# --------------------------------------------------------------------------- cores


def fgsm_adversary_core(fn, x, t, *, key, epsilon, step_size, random_start=True,
                        input_range=(0.0, 1.0)):
  """Unvalidated core of `fgsm_adversary`."""
  if random_start:
    delta = _common.random_delta(key, x.shape, x.dtype, epsilon, "uniform")
    x0 = _project(x + delta, x, epsilon, input_range)
  else:
    x0 = x
  g = _ce_grad(fn, x0, t)
  return jax.lax.stop_gradient(_project(x0 + step_size * jnp.sign(g), x, epsilon, input_range))


def pgd_adversary_core(fn, x, t, *, key, epsilon, step_size, num_steps, random_start=True,
                       input_range=(0.0, 1.0)):
  """Unvalidated core of `pgd_adversary`."""
  x = jax.lax.stop_gradient(x)
  if random_start:
    delta = _common.random_delta(key, x.shape, x.dtype, epsilon, "uniform")
    x0 = _project(x + delta, x, epsilon, input_range)
  else:
    x0 = x

  def body(_, z):
    g = _ce_grad(fn, z, t)
    return _project(z + step_size * jnp.sign(g), x, epsilon, input_range)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, num_steps, body, x0))


def trades_adversary_core(fn, x, *, key, epsilon, step_size, num_steps, input_range=(0.0, 1.0)):
  """Unvalidated core of `trades_adversary`."""
  x = jax.lax.stop_gradient(x)
  p_logits = jax.lax.stop_gradient(fn(x))
  x0 = x + 0.001 * _random.normal(key, x.shape, x.dtype)

  def body(_, z):
    g = jax.grad(lambda w: jnp.sum(_kl_rows(p_logits, fn(w))))(z)
    return _project(z + step_size * jnp.sign(g), x, epsilon, input_range)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, num_steps, body, x0))


# --------------------------------------------------------------------------- validation


def _check_common(fn, x, target, key, epsilon, input_range):
  x, t = _common.prepare(fn, x, target)
  V.check_key(key)
  eps = _common.check_epsilon(epsilon, x)
  return x, t, eps, core.check_input_range(input_range)


def _step(step_size, x, default):
  if step_size is None:
    return default
  V.check_nonnegative(step_size, name="step_size")
  return jnp.asarray(step_size, x.dtype)


# --------------------------------------------------------------------------- attacks


@jit_with_callables(static_argnames=("random_start", "input_range"))
def _fgsm_adversary(fn, x, t, key, epsilon, step_size, random_start, input_range):
  return fgsm_adversary_core(fn, x, t, key=key, epsilon=epsilon, step_size=step_size,
                             random_start=random_start, input_range=input_range)


def fgsm_adversary(fn: Callable, x: Float[Array, "B ..."], target: Target, *, key: jax.Array,
                   epsilon: Any, step_size: Any = None, random_start: bool = True,
                   input_range: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """One FGSM step with a random start, the inner attack of fast adversarial training.

  ``delta_0 ~ U[-eps, eps]``, then ``x_adv = P(x + delta_0 + step_size *
  sign(grad_x CE))``, where ``P`` projects onto the l-inf ball of radius
  ``epsilon`` around ``x`` and onto the box ``input_range``.

  Args:
    fn: model ``[B, *F] -> [B, C]`` (inference mode).
    x: clean inputs ``[B, *F]``.
    target: true classes.
    key: PRNG key for the random start.
    epsilon: l-inf radius (traced), scalar or broadcastable to ``x[0]``.
    step_size: FGSM step; default ``1.25 * epsilon`` (Wong et al.).
    random_start: start from a uniform point of the ball.
    input_range: data range ``(min, max)``, or ``None`` for no box.

  Returns:
    ``x_adv [B, *F]`` (a constant for autodiff), inside the ball and box.

  References:
    Wong, Rice, Kolter, "Fast is better than free: Revisiting adversarial
    training", ICLR 2020. https://arxiv.org/abs/2001.03994
  """
  x, t, eps, input_range = _check_common(fn, x, target, key, epsilon, input_range)
  return _fgsm_adversary(fn=fn, x=x, t=t, key=key, epsilon=eps,
                         step_size=_step(step_size, x, 1.25 * eps),
                         random_start=bool(random_start), input_range=input_range)


@jit_with_callables(static_argnames=("num_steps", "random_start", "input_range"))
def _pgd_adversary(fn, x, t, key, epsilon, step_size, num_steps, random_start, input_range):
  return pgd_adversary_core(fn, x, t, key=key, epsilon=epsilon, step_size=step_size,
                            num_steps=num_steps, random_start=random_start, input_range=input_range)


def pgd_adversary(fn: Callable, x: Float[Array, "B ..."], target: Target, *, key: jax.Array,
                  epsilon: Any, step_size: Any = None, num_steps: int = 10,
                  random_start: bool = True,
                  input_range: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """l-inf PGD on the cross-entropy (Madry et al.), the inner attack of PGD-AT.

  ``num_steps`` signed-gradient ascent steps of size ``step_size`` from a
  uniform random start, each followed by projection onto the ``epsilon``
  ball and the box; one `lax.fori_loop`.

  Args:
    fn: model ``[B, *F] -> [B, C]`` (inference mode).
    x: clean inputs ``[B, *F]``.
    target: true classes.
    key: PRNG key for the random start.
    epsilon: l-inf radius (traced).
    step_size: ascent step (traced); default ``2.5 * epsilon / num_steps``.
    num_steps: number of steps (static).
    random_start: start from a uniform point of the ball.
    input_range: data range, or ``None``.

  Returns:
    ``x_adv [B, *F]`` (a constant for autodiff).

  References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
  """
  x, t, eps, input_range = _check_common(fn, x, target, key, epsilon, input_range)
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  return _pgd_adversary(fn=fn, x=x, t=t, key=key, epsilon=eps,
                        step_size=_step(step_size, x, 2.5 * eps / num_steps),
                        num_steps=num_steps, random_start=bool(random_start),
                        input_range=input_range)


@jit_with_callables(static_argnames=("num_steps", "input_range"))
def _trades_adversary(fn, x, key, epsilon, step_size, num_steps, input_range):
  return trades_adversary_core(fn, x, key=key, epsilon=epsilon, step_size=step_size,
                               num_steps=num_steps, input_range=input_range)


def trades_adversary(fn: Callable, x: Float[Array, "B ..."], *, key: jax.Array, epsilon: Any,
                     step_size: Any = None, num_steps: int = 10,
                     input_range: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """The TRADES inner attack: l-inf PGD maximising ``KL(p(x) || p(x_adv))``.

  Starts at ``x + 0.001 N(0, I)`` as in the reference code; needs no labels.

  Args:
    fn: model ``[B, *F] -> [B, C]`` (inference mode).
    x: clean inputs ``[B, *F]``.
    key: PRNG key for the start.
    epsilon: l-inf radius (traced).
    step_size: ascent step; default ``2.5 * epsilon / num_steps``.
    num_steps: number of steps (static).
    input_range: data range, or ``None``.

  Returns:
    ``x_adv [B, *F]`` (a constant for autodiff).

  References:
    Zhang et al., "Theoretically Principled Trade-off between Robustness and
    Accuracy", ICML 2019. https://arxiv.org/abs/1901.08573
  """
  x = V.check_batch(x)
  V.num_classes_of(fn, x)
  V.check_key(key)
  eps = _common.check_epsilon(epsilon, x)
  input_range = core.check_input_range(input_range)
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  return _trades_adversary(fn=fn, x=x, key=key, epsilon=eps,
                           step_size=_step(step_size, x, 2.5 * eps / num_steps),
                           num_steps=num_steps, input_range=input_range)


# --------------------------------------------------------------------------- losses


def _attack_fn(fn, attack_fn, x):
  if attack_fn is None:
    return fn
  V.num_classes_of(attack_fn, x, name="attack_fn")
  return attack_fn


def fgsm_training(fn: Callable, x: Float[Array, "B ..."], target: Target, *, key: jax.Array,
                  epsilon: Any, step_size: Any = None, attack_fn: Callable | None = None,
                  input_range: tuple[float, float] | None = (0.0, 1.0),
                  reduction: str = "mean") -> jax.Array:
  """Fast adversarial-training loss: ``CE(fn(x_adv), y)`` with `fgsm_adversary`.

  Args:
    fn: model being trained, ``[B, *F] -> [B, C]``.
    x, target, key, epsilon, step_size, input_range: as in `fgsm_adversary`.
    attack_fn: function attacked (default ``fn``); pass the inference-mode
      model for BatchNorm networks.
    reduction: ``"mean"`` or ``"none"``.

  Returns:
    Scalar (or ``[B]``) adversarial cross-entropy. Lower is better.
  """
  x, t, eps, input_range = _check_common(fn, x, target, key, epsilon, input_range)
  V.check_choice(reduction, _common.REDUCTIONS, name="reduction")
  afn = _attack_fn(fn, attack_fn, x)
  x_adv = fgsm_adversary(afn, x, t, key=key, epsilon=eps, step_size=step_size,
                         input_range=input_range)
  return _common.reduce(_common.cross_entropy(fn(x_adv), t), reduction)


def pgd_training(fn: Callable, x: Float[Array, "B ..."], target: Target, *, key: jax.Array,
                 epsilon: Any, step_size: Any = None, num_steps: int = 10,
                 attack_fn: Callable | None = None,
                 input_range: tuple[float, float] | None = (0.0, 1.0),
                 reduction: str = "mean") -> jax.Array:
  """PGD adversarial-training loss (Madry et al.): ``CE(fn(x_adv), y)``.

  Args:
    fn: model being trained.
    x, target, key, epsilon, step_size, num_steps, input_range: as in `pgd_adversary`.
    attack_fn: function attacked (default ``fn``).
    reduction: ``"mean"`` or ``"none"``.

  Returns:
    Scalar (or ``[B]``) adversarial cross-entropy. Lower is better.
  """
  x, t, eps, input_range = _check_common(fn, x, target, key, epsilon, input_range)
  V.check_choice(reduction, _common.REDUCTIONS, name="reduction")
  afn = _attack_fn(fn, attack_fn, x)
  x_adv = pgd_adversary(afn, x, t, key=key, epsilon=eps, step_size=step_size,
                        num_steps=num_steps, input_range=input_range)
  return _common.reduce(_common.cross_entropy(fn(x_adv), t), reduction)


def trades_terms(fn, x, t, x_adv):
  """``(CE(fn(x), y), KL(p(x) || p(x_adv)))`` per example, both ``[B]``."""
  logits = fn(x)
  return _common.cross_entropy(logits, t), _kl_rows(logits, fn(x_adv))


def trades(fn: Callable, x: Float[Array, "B ..."], target: Target, *, key: jax.Array,
           epsilon: Any, beta: Any = 6.0, step_size: Any = None, num_steps: int = 10,
           attack_fn: Callable | None = None, input_range: tuple[float, float] | None = (0.0, 1.0),
           reduction: str = "mean") -> jax.Array:
  """TRADES loss: ``CE(fn(x), y) + beta * KL(p(x) || p(x_adv))``.

  The KL is differentiated through both ``p(x)`` and ``p(x_adv)``, as in the
  reference code (``x_adv`` itself is a constant).

  Args:
    fn: model being trained.
    x, target, key, epsilon, step_size, num_steps, input_range: as in `trades_adversary`.
    beta: robustness weight (>= 0, traced); 6 in the paper.
    attack_fn: function attacked (default ``fn``).
    reduction: ``"mean"`` or ``"none"``.

  Returns:
    Scalar (or ``[B]``) loss. Lower is better.

  References:
    Zhang et al., ICML 2019. https://arxiv.org/abs/1901.08573
  """
  x, t, eps, input_range = _check_common(fn, x, target, key, epsilon, input_range)
  V.check_nonnegative(beta, name="beta")
  V.check_choice(reduction, _common.REDUCTIONS, name="reduction")
  afn = _attack_fn(fn, attack_fn, x)
  x_adv = trades_adversary(afn, x, key=key, epsilon=eps, step_size=step_size,
                           num_steps=num_steps, input_range=input_range)
  ce, kl = trades_terms(fn, x, t, x_adv)
  return _common.reduce(ce + beta * kl, reduction)
