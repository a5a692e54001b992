"""Local Lipschitz estimate of an explanation (SENN's stability), two estimators.

``L(x) = max_{x' in B_eps(x)} ||Phi(x) - Phi(x')||_2 / ||x - x'||_2``.

* ``method="sampling"`` evaluates the ratio at ``num_samples`` random points
  and keeps the largest, as Quantus's LocalLipschitzEstimate does.
* ``method="gradient_ascent"`` runs projected gradient ascent on the ratio
  from ``num_restarts`` random starting points for ``num_steps`` steps each
  (inside `lax.scan`), and keeps the largest ratio seen at any iterate. It
  differentiates through the explainer: for a gradient explanation that is a
  second derivative of the model. A ReLU network's gradient is piecewise
  constant, so the ascent then only sees the denominator; explain a smooth
  surrogate (`rattr_jax.models.surrogate_fn`) to give it a signal.

Differences from the references:

* Quantus perturbs with unbounded Gaussian noise ``N(0, 0.1^2)``, 200 samples,
  and by default normalises both explanations by their maximum absolute value
  (``normalise=True``) and adds ``1e-10`` to the denominator. Use
  ``method="sampling", noise="gaussian", epsilon=0.1`` for its sampling; we
  never normalise (pass a normalising explainer to do so) and add the
  same ``1e-10``.
* SENN's code maximises over a box ``x +- eps * std`` with 10 steps of
  Bayesian optimisation, and its discrete variant squares both distances. We
  use an L2 (default) or Linf ball and never square.

`senn_local_lipschitz_estimate` is the SENN variant: ``theta`` replaces
``Phi`` and the concepts ``h`` replace ``x`` in the denominator.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax import core
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax.metrics import _common as C

METHODS = ("gradient_ascent", "sampling")
_DEN_EPS = 1e-10  # Quantus's ``lipschitz_constant`` adds this to the denominator.


def _project(delta, epsilon, norm):
  """``delta [S, B, *F]`` projected onto the ``norm`` ball of radius ``epsilon`` (per sample)."""
  flat = delta.reshape((-1,) + delta.shape[2:])
  tm = core.ThreatModel(epsilon=epsilon, norm=norm)
  return tm.project(flat, jnp.zeros_like(flat)).reshape(delta.shape)


def _direction(g, norm):
  if norm == "linf":
    return jnp.sign(g)
  n = C.safe_l2(g, batch_dims=2)
  return g / jnp.maximum(n, 1e-30).reshape(n.shape + (1,) * (g.ndim - 2))


def _lipschitz(phi_fn, rep_fn, pred_fn, x, key, epsilon, step_size, *, method, num_samples,
               num_steps, num_restarts, norm, noise, on_flip, input_range, chunk_size):
  """Core shared by both public estimators.

  ``phi_fn(xs [S, B, *F], i) -> [S, B, ...]`` (explanation or theta; ``i``
  numbers the call, for the explainer's key),
  ``rep_fn(xs) -> [S, B, ...]`` (the denominator's representation: x or h),
  ``pred_fn(xs) -> [S, B]`` predicted classes or None.
  """
  bsz, feat = x.shape[0], x.shape[1:]
  keys = C.example_keys(key, bsz)
  phi0 = phi_fn(x[None], 0)[0]
  rep0 = rep_fn(x[None])[0]
  pred0 = None if pred_fn is None else pred_fn(x[None])[0]

  def point(delta):
    return C.clip_to(x[None] + delta, input_range)

  def ratio(xs, i):
    num = C.safe_l2(phi_fn(xs, i) - phi0[None], batch_dims=2)
    den = C.safe_l2(rep_fn(xs) - rep0[None], batch_dims=2)
    return num / (den + _DEN_EPS)

  def valid_of(xs):
    if pred0 is None:
      return jnp.ones(xs.shape[:2], bool)
    return pred_fn(xs) == pred0[None]

  if method == "sampling":
    def chunk(idx):
      xs = point(C.sample_noise(keys, idx, feat, x.dtype, epsilon, noise, norm))
      return ratio(xs, 1 + idx[0]), valid_of(xs)

    vals, valid = C.map_chunks(chunk, num_samples, chunk_size)
    return C.reduce_samples(vals, valid, on_flip, "max")

  def restarts(idx):
    delta0 = C.sample_noise(keys, idx, feat, x.dtype, epsilon, "uniform", norm)

    base = 1 + idx[0] * (num_steps + 1)  # explainer call numbers of this chunk

    def objective(delta, i):
      r = ratio(point(delta), i)
      return jnp.sum(r), r

    def step(delta, p):
      (_, r), g = jax.value_and_grad(objective, has_aux=True)(delta, base + p)
      valid = valid_of(jax.lax.stop_gradient(point(delta)))
      delta = _project(delta + step_size * _direction(g, norm), epsilon, norm)
      if input_range is not None:  # stay inside the data range too
        delta = point(delta) - x[None]
      return delta, (r, valid)

    delta, (rs, valids) = jax.lax.scan(step, delta0, jnp.arange(num_steps))
    xs = point(delta)
    rs = jnp.concatenate([rs, ratio(xs, base + num_steps)[None]])  # [T+1, c, B]
    valids = jnp.concatenate([valids, valid_of(xs)[None]])
    return jnp.swapaxes(rs, 0, 1), jnp.swapaxes(valids, 0, 1)  # [c, T+1, B]

  vals, valid = C.map_chunks(restarts, num_restarts, chunk_size)
  vals = vals.reshape((-1, bsz))
  valid = valid.reshape((-1, bsz))
  return C.reduce_samples(vals, valid, on_flip, "max")


_STATIC = ("method", "num_samples", "num_steps", "num_restarts", "norm", "noise", "on_flip",
           "input_range", "chunk_size")


@jit_with_callables(callables=("explainer", "fn"), static_argnames=_STATIC)
def _local_lipschitz(fn, explainer, x, t, key, epsilon, step_size, method, num_samples,
                     num_steps, num_restarts, norm, noise, on_flip, input_range, chunk_size):
  phi_fn = lambda xs, i: C.explain_many(explainer, fn, xs, t, core.call_key(key, i))  # noqa: E731
  pred_fn = None if on_flip == "ignore" else (lambda xs: C.predict_many(fn, xs))
  return _lipschitz(phi_fn, lambda xs: xs, pred_fn, x, key, epsilon, step_size, method=method,
                    num_samples=num_samples, num_steps=num_steps, num_restarts=num_restarts,
                    norm=norm, noise=noise, on_flip=on_flip, input_range=input_range,
                    chunk_size=chunk_size)


@jit_with_callables(callables=("theta_fn", "h_fn", "fn"), static_argnames=_STATIC)
def _senn_lipschitz(theta_fn, h_fn, fn, x, key, epsilon, step_size, method, num_samples,
                    num_steps, num_restarts, norm, noise, on_flip, input_range, chunk_size):
  def over_samples(f):
    def g(xs, i=None):
      s, b = xs.shape[:2]
      out = f(xs.reshape((s * b,) + xs.shape[2:]))
      return out.reshape((s, b) + out.shape[1:])
    return g

  pred_fn = None if on_flip == "ignore" else (lambda xs: C.predict_many(fn, xs))
  return _lipschitz(over_samples(theta_fn), over_samples(h_fn), pred_fn, x, key, epsilon,
                    step_size, method=method, num_samples=num_samples, num_steps=num_steps,
                    num_restarts=num_restarts, norm=norm, noise=noise, on_flip=on_flip,
                    input_range=input_range, chunk_size=chunk_size)


def _check_common(x, key, epsilon, method, num_samples, num_steps, num_restarts, step_size, norm,
                  noise, fn, on_flip, input_range, chunk_size):
  key = C.check_metric_key(key, x.shape[0])
  V.check_positive(epsilon, name="epsilon")
  V.check_choice(method, METHODS, name="method")
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  num_restarts = V.check_positive_int(num_restarts, name="num_restarts")
  if step_size is None:
    step_size = 2.5 * epsilon / num_steps
  V.check_positive(step_size, name="step_size")
  V.check_choice(norm, core.NORMS, name="norm")
  V.check_choice(noise, C.NOISES, name="noise")
  C.check_flip(on_flip)
  if on_flip != "ignore" and fn is None:
    raise ValueError(f"`on_flip={on_flip!r}` needs the model `fn` to detect prediction "
                     "changes; pass fn=... or on_flip='ignore'.")
  input_range = C.check_range(input_range)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  dt = x.dtype
  return (key, jnp.asarray(epsilon, dt), jnp.asarray(step_size, dt), num_samples, num_steps,
          num_restarts, input_range, chunk_size)


def local_lipschitz_estimate(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                             target: Target, *, key: PRNGKey, epsilon: float = 1.0,
                             method: str = "gradient_ascent", num_samples: int = 50,
                             num_steps: int = 20, num_restarts: int = 2,
                             step_size: float | None = None, norm: str = "l2",
                             noise: str = "uniform", on_flip: str = "ignore",
                             input_range=None,
                             chunk_size: int | None = None) -> Float[Array, "B"]:
  """Local Lipschitz estimate of an explanation (Alvarez-Melis & Jaakkola).

  ``L(x) = max_{x' in B_eps(x)} ||Phi(x) - Phi(x')||_2 / (||x - x'||_2 + 1e-10)``,
  estimated from below by random sampling or by projected gradient ascent
  with restarts (see the module docstring). **Lower is better** (a more
  stable explanation). A linear model's gradient explanation has ``L = 0``;
  for a logit ``0.5 x^T A x`` the gradient ``A x`` has ``L = ||A||_2``.

  Args:
    fn: the model ``[B, *F] -> [B, C]`` (explained; detects prediction changes).
    explainer: ``explainer(fn, x, target, *, key) -> attribution`` shaped like
      ``x``; it must treat examples independently. Gradient ascent
      differentiates through it.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: one PRNG key or ``B`` keys (one per example).
    epsilon: radius of the ball ``B_eps(x)`` (``noise="gaussian"``: the noise
      standard deviation, as Quantus's ``perturb_std``).
    method: ``"gradient_ascent"`` or ``"sampling"``.
    num_samples: random points (``method="sampling"``).
    num_steps: ascent steps per restart (``method="gradient_ascent"``).
    num_restarts: random starting points of the ascent.
    step_size: ascent step length in the ball's norm (signed gradient for
      ``linf``, normalised gradient for ``l2``); default ``2.5 epsilon /
      num_steps``. Traced: changing it does not recompile.
    norm: the perturbation ball's norm, ``"l2"`` or ``"linf"`` (as in
      `rattr_jax.core.ThreatModel`).
    noise: sampling distribution: ``"uniform"`` in the ball, or
      ``"gaussian"`` ``N(0, epsilon^2)`` (Quantus; unbounded).
    on_flip: ``"ignore"``, ``"exclude"`` (points that change the prediction do
      not count) or ``"nan"``.
    input_range: optional valid box ``(lo, hi)`` for ``x'``.
    chunk_size: samples or restarts evaluated per explainer call
      (``chunk_size * B`` inputs); ``None``: all at once.

  Returns:
    ``[B]`` estimates (lower bounds of the true local Lipschitz constant).

  References:
    Alvarez-Melis, Jaakkola, "Towards Robust Interpretability with
    Self-Explaining Neural Networks", NeurIPS 2018. https://arxiv.org/abs/1806.07538
  """
  V.check_key(key)
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=True,
                                        what="local_lipschitz_estimate")
  key, eps, step, num_samples, num_steps, num_restarts, input_range, chunk_size = _check_common(
      x, key, epsilon, method, num_samples, num_steps, num_restarts, step_size, norm, noise, fn,
      on_flip, input_range, chunk_size)
  return _local_lipschitz(fn, explainer, x, t, key, eps, step, method, num_samples, num_steps,
                          num_restarts, norm, noise, on_flip, input_range, chunk_size)


def senn_local_lipschitz_estimate(theta_fn: Callable, h_fn: Callable, x: Float[Array, "B ..."],
                                  *, key: PRNGKey, epsilon: float = 1.0,
                                  method: str = "gradient_ascent", num_samples: int = 50,
                                  num_steps: int = 20, num_restarts: int = 2,
                                  step_size: float | None = None, norm: str = "l2",
                                  noise: str = "uniform", fn: Callable | None = None,
                                  on_flip: str = "ignore", input_range=None,
                                  chunk_size: int | None = None) -> Float[Array, "B"]:
  """SENN's stability of the relevances: ``theta`` against the concepts ``h``.

  ``L(x) = max_{x' in B_eps(x)} ||theta(x) - theta(x')||_2 / (||h(x) - h(x')||_2 + 1e-10)``.
  With ``h`` the identity this is `local_lipschitz_estimate` with
  ``Phi = theta``. Arguments as in `local_lipschitz_estimate`. **Lower is
  better.**

  Args:
    theta_fn: ``x [B, *F] -> theta [B, ...]`` (e.g. ``[B, k, C]`` relevances).
    h_fn: ``x [B, *F] -> h [B, ...]`` concepts (e.g. ``[B, k]``).
    x: inputs ``[B, *F]``.
    fn: the model, needed only when ``on_flip`` is not ``"ignore"`` (SENN's
      relevances are not an explainer of ``fn``, so ``fn`` is optional here).

  Returns:
    ``[B]`` estimates.

  References:
    Alvarez-Melis, Jaakkola, NeurIPS 2018 (Section 5, stability).
  """
  x = V.check_batch(x)
  for name, f in (("theta_fn", theta_fn), ("h_fn", h_fn)):
    if not callable(f):
      raise ValueError(f"`{name}` must be a function of x; got {type(f).__name__}.")
    try:
      out = jax.eval_shape(f, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception as e:
      raise ValueError(f"`{name}` failed on x of shape {tuple(x.shape)}: {e}") from e
    if not hasattr(out, "shape") or len(out.shape) < 2 or out.shape[0] != x.shape[0]:
      raise ValueError(f"`{name}` must return a batch [B, ...] with B = {x.shape[0]}; got "
                       f"{getattr(out, 'shape', type(out))}.")
  if fn is not None:
    V.num_classes_of(fn, x)
  key, eps, step, num_samples, num_steps, num_restarts, input_range, chunk_size = _check_common(
      x, key, epsilon, method, num_samples, num_steps, num_restarts, step_size, norm, noise, fn,
      on_flip, input_range, chunk_size)
  return _senn_lipschitz(theta_fn, h_fn, fn, x, key, eps, step, method, num_samples, num_steps,
                         num_restarts, norm, noise, on_flip, input_range, chunk_size)
