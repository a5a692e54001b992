"""Hessian-vector products of the target logit (or loss), per example over a batch.

The input Hessian of example ``b`` is ``H_b = d^2 s_b / d x_b^2`` with ``s_b``
either the target logit ``fn(x)[b, target[b]]`` (``objective="logit"``) or the
cross-entropy of the target, ``-log softmax(fn(x))[b, target[b]]``
(``objective="loss"``). Because examples do not interact inside ``fn`` (any
model in inference mode), the Hessian of ``sum_b s_b`` is block-diagonal and
one product with a batch of directions ``v [B, *F]`` returns every ``H_b v_b``
at the cost of one batched HVP.

Two ways of differentiating twice are offered (``mode``):

* ``"forward_over_reverse"``: ``jax.jvp`` of ``jax.grad`` (Pearlmutter's
  trick), the cheapest in theory (about 2-3 gradients). It needs forward-mode
  AD through ``fn``, which a `jax.custom_vjp` does not have. Every
  `rattr_jax.models` layer has it, the default fast CPU convolution included
  (a primitive with its own JVP and transposes).
* ``"reverse_over_reverse"``: the VJP of the gradient, ``grad_x <grad s, v>``,
  which equals ``H v`` because ``H`` is symmetric. It also works through
  ``custom_vjp`` functions.
* ``"auto"`` (default) picks forward-over-reverse when ``fn`` has no
  ``custom_vjp`` inside (checked once on its jaxpr, before tracing) and falls
  back to reverse-over-reverse otherwise.

Both modes *linearize* once: the gradient's forward/backward pass is computed
once and every further product (Lanczos, Hutchinson) only evaluates the
linear map.

ReLU networks: ``relu'' = 0``, so the input Hessian of the logit of a
piecewise-linear network (ReLU, max-pooling, linear layers) is exactly zero
almost everywhere and every product returns zeros (never NaN). The loss
objective keeps its Gauss-Newton part ``J^T (diag p - p p^T) J``, which is
non-zero. Use a softplus-beta surrogate (`rattr_jax.models.surrogate_fn`) to
study the logit geometry of a ReLU network.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax import core

OBJECTIVES = ("logit", "loss")
MODES = ("auto", "forward_over_reverse", "reverse_over_reverse")
FORWARD = "forward_over_reverse"
REVERSE = "reverse_over_reverse"


# ----------------------------------------------------------------------------
# Forward-mode support detection (before tracing).


def _primitive_names(jaxpr, acc: set[str]) -> set[str]:
  for eqn in jaxpr.eqns:
    acc.add(eqn.primitive.name)
    for p in eqn.params.values():
      for q in (p if isinstance(p, (tuple, list)) else (p,)):
        if isinstance(q, jex.core.ClosedJaxpr):
          _primitive_names(q.jaxpr, acc)
        elif isinstance(q, jex.core.Jaxpr):
          _primitive_names(q, acc)
  return acc


def _as_spec(a: Any) -> Any:
  return jax.tree.map(lambda z: jax.ShapeDtypeStruct(jnp.shape(z), jnp.result_type(z)), a)


def _detect(f: Callable, specs: Any) -> bool:
  closed = jax.make_jaxpr(f)(*specs)
  names = _primitive_names(closed.jaxpr, set())
  return not any(n.startswith("custom_vjp_call") for n in names)


@functools.lru_cache(maxsize=128)
def _detect_cached(f: Callable, spec_key: Any) -> bool:
  specs = jax.tree.unflatten(spec_key[0], [jax.ShapeDtypeStruct(s, d) for s, d in spec_key[1]])
  return _detect(f, specs)


def supports_forward_mode(f: Callable, *args: Any) -> bool:
  """Whether ``f(*args)`` can be differentiated in forward mode (``jax.jvp``).

  ``False`` when the jaxpr of ``f`` contains a `jax.custom_vjp` call (every
  `rattr_jax.models` layer, the fast CPU convolution included, has forward mode).
  Only shapes and dtypes of ``args`` are used; the answer is cached per
  (hashable) ``f`` and shape.

  Args:
    f: any function of arrays (e.g. ``fn`` or ``apply``).
    *args: example arguments (arrays, pytrees of arrays or ShapeDtypeStructs).

  Returns:
    ``True`` if no ``custom_vjp`` is found.
  """
  specs = _as_spec(args)
  leaves, treedef = jax.tree.flatten(specs)
  key = (treedef, tuple((tuple(l.shape), jnp.dtype(l.dtype)) for l in leaves))
  try:
    return _detect_cached(f, key)
  except TypeError:  # unhashable f
    return _detect(f, specs)


def resolve_mode(mode: str, f: Callable, *args: Any, name: str = "fn") -> str:
  """Turns ``mode`` (possibly ``"auto"``) into a concrete mode, or raises.

  Raises:
    ValueError: ``mode`` is unknown, or forward-over-reverse was requested for
      a function containing a ``custom_vjp``.
  """
  V.check_choice(mode, MODES, name="mode")
  if mode == REVERSE:
    return mode
  ok = supports_forward_mode(f, *args)
  if mode == "auto":
    return FORWARD if ok else REVERSE
  if not ok:
    raise ValueError(
        f"`mode`='forward_over_reverse' needs forward-mode AD (jax.jvp) through `{name}`, but "
        f"`{name}` contains a jax.custom_vjp, which has none. Pass "
        "mode='reverse_over_reverse' (or 'auto', which falls back to it).")
  return mode


# ----------------------------------------------------------------------------
# Objectives and linearised Hessian operators (traceable, used inside jit).


def per_example_objective(logits: jax.Array, t: jax.Array, objective: str) -> jax.Array:
  """``[B]`` target logits or target cross-entropies from logits ``[B, C]``."""
  if objective == "logit":
    return jnp.take_along_axis(logits, t[:, None], axis=1)[:, 0]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, t[:, None], axis=1)[:, 0]


def input_objective(fn: Callable, t: jax.Array, objective: str) -> Callable:
  """``z -> sum_b s_b(z_b)``: its gradient is the per-example gradient."""
  return lambda z: jnp.sum(per_example_objective(fn(z), t, objective))


def linearize_gradient(f: Callable, x: Any, mode: str) -> tuple[Any, Callable]:
  """Returns ``(grad f(x), v -> H v)`` for a scalar ``f`` of a pytree ``x``.

  The gradient's forward and backward passes run once; the returned linear
  map reuses them. Forward-over-reverse linearizes the gradient with
  `jax.linearize`; reverse-over-reverse takes its VJP (``H^T v = H v``).
  """
  g = jax.grad(f)
  if mode == FORWARD:
    return jax.linearize(g, x)
  grad, vjp = jax.vjp(g, x)
  return grad, lambda v: vjp(v)[0]


def input_hessian_operator(fn: Callable, x: jax.Array, t: jax.Array, objective: str,
                           mode: str) -> tuple[jax.Array, Callable]:
  """``(gradient [B, *F], v [B, *F] -> H v [B, *F])`` of the per-example objective."""
  return linearize_gradient(input_objective(fn, t, objective), x, mode)


def flat_operator(op: Callable, shape: tuple[int, ...]) -> Callable:
  """Wraps ``op`` on ``[B, *F]`` as a map on flat ``[B, n]`` vectors."""
  b = shape[0]
  return lambda q: op(q.reshape(shape)).reshape(b, -1)


def num_features(x: jax.Array) -> int:
  return math.prod(x.shape[1:])


# ----------------------------------------------------------------------------
# Shared validation.


def prepare(fn: Callable, x: Any, target: Any, objective: str, mode: str
            ) -> tuple[jax.Array, jax.Array, str]:
  """Validates ``x``, ``target``, ``objective``, ``mode``; resolves ``mode``."""
  x, t = core.prepare(fn, x, target)
  V.check_choice(objective, OBJECTIVES, name="objective")
  mode = resolve_mode(mode, fn, x)
  return x, t, mode


# ----------------------------------------------------------------------------
# Public: input HVP.


@jit_with_callables(static_argnames=("objective", "mode"))
def _hvp(fn, x, t, v, objective, mode):
  _, op = input_hessian_operator(fn, x, t, objective, mode)
  return op(v)


def hvp(fn: Callable, x: jax.Array, target: Target, v: jax.Array, *,
        objective: str = "logit", mode: str = "auto") -> jax.Array:
  """Per-example input Hessian-vector products ``H_b v_b``.

  ``H_b`` is the Hessian of example ``b``'s target logit (or target
  cross-entropy) with respect to its own input ``x[b]``. No Hessian is ever
  formed: the product costs about two to three gradients.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]`` (images NHWC).
    target: class index, an int or an int array ``[B]``.
    v: directions ``[B, *F]``, one per example.
    objective: ``"logit"`` (the target logit) or ``"loss"`` (cross-entropy of
      the target class).
    mode: ``"auto"``, ``"forward_over_reverse"`` (``jax.jvp`` of
      ``jax.grad``) or ``"reverse_over_reverse"``. ``"auto"`` uses forward over
      reverse unless ``fn`` contains a ``custom_vjp`` (e.g. a user's layer), then
      falls back to reverse over reverse.

  Returns:
    ``[B, *F]``: ``H_b v_b`` for every example. Exactly zero for networks that
    are piecewise linear in ``x`` (ReLU) with ``objective="logit"``.

  Raises:
    ValueError: bad ``x``/``target``, ``v`` not shaped like ``x``, unknown
      ``objective``/``mode``, or forward mode requested through a
      ``custom_vjp``.

  References:
    Pearlmutter, "Fast Exact Multiplication by the Hessian", Neural
    Computation 1994.
  """
  x, t, mode = prepare(fn, x, target, objective, mode)
  v = check_direction(v, x)
  return _hvp(fn, x, t, v, objective, mode)


def check_direction(v: Any, x: jax.Array, *, name: str = "v") -> jax.Array:
  """Checks that ``v`` is a finite floating array shaped like ``x``."""
  if not hasattr(v, "shape"):
    v = jnp.asarray(v)
  V.check_same_shape(v, x, names=(name, "x"))
  v = V.check_batch(v, name=name)
  return v.astype(x.dtype)


# ----------------------------------------------------------------------------
# Public: parameter HVP.


def param_objective(apply: Callable, x: jax.Array, t: jax.Array, objective: str) -> Callable:
  """``params -> mean_b s_b``, the batch-mean objective as a function of params."""
  return lambda p: jnp.mean(per_example_objective(apply(p, x), t, objective))


def check_params(params: Any, *, name: str = "params") -> None:
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError(f"`{name}` has no array leaves.")
  for leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise ValueError(
          f"`{name}` must contain only floating arrays (pass the parameter state only); "
          f"found dtype {jnp.result_type(leaf)}.")


def prepare_params(apply: Callable, params: Any, x: Any, target: Any, objective: str,
                   mode: str) -> tuple[jax.Array, jax.Array, str]:
  x = V.check_batch(x)
  check_params(params)
  try:
    out = jax.eval_shape(apply, _as_spec(params), jax.ShapeDtypeStruct(x.shape, x.dtype))
  except Exception as e:
    raise ValueError(f"`apply` failed on (params, x of shape {tuple(x.shape)}): {e}") from e
  if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x.shape[0]:
    raise ValueError(
        f"`apply(params, x)` must return logits [B, C]; got {getattr(out, 'shape', type(out))}.")
  t = V.check_target(target, x.shape[0], int(out.shape[1]))
  V.check_choice(objective, OBJECTIVES, name="objective")
  mode = resolve_mode(mode, apply, params, x, name="apply")
  return x, t, mode


@jit_with_callables(callables=("apply",), static_argnames=("objective", "mode"))
def _param_hvp(apply, params, x, t, v, objective, mode):
  _, op = linearize_gradient(param_objective(apply, x, t, objective), params, mode)
  return op(v)


def param_hvp(apply: Callable, params: Any, x: jax.Array, target: Target, v: Any, *,
              objective: str = "loss", mode: str = "auto") -> Any:
  """Hessian-vector product with respect to the parameters.

  The Hessian is that of the batch-mean objective ``mean_b s_b(params)``
  (the usual loss-landscape Hessian; with ``objective="logit"``, of the mean
  target logit).

  Args:
    apply: ``apply(params, x) -> logits [B, C]``, e.g. from
      `rattr_jax.models.functional`.
    params: a pytree of floating arrays.
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    v: a direction with the structure and shapes of ``params``.
    objective: ``"loss"`` (default) or ``"logit"``.
    mode: as in `hvp`.

  Returns:
    ``H v``, a pytree like ``params``.
  """
  x, t, mode = prepare_params(apply, params, x, target, objective, mode)
  if jax.tree.structure(v) != jax.tree.structure(params):
    raise ValueError("`v` must have the same pytree structure as `params`.")
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(params)):
    V.check_same_shape(a, b, names=("v", "params"))
  v = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), v, params)
  return _param_hvp(apply, params, x, t, v, objective, mode)
