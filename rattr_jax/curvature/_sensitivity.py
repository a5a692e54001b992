"""First-order change of a normalised saliency map along an input direction.

``sensitivity(x; v) = d/de map(x + e v) |_{e=0}``, a Jacobian-vector product
of the map. For the plain gradient explanation its un-normalised part is the
Hessian-vector product ``H v``: explanation attacks (Ghorbani et al.,
Dombrowski et al.) search for directions ``v`` where this is large while the
logit's change ``grad s . v`` stays small.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax import core
from rattr_jax.curvature import _hvp


def _map_fn(fn, explainer, t, key, reduce, normalize, percentile):
  def m(z):
    attr = explainer(fn, z, t, key=key)
    return core.normalize_map(core.reduce_channels(attr, reduce), normalize, percentile)
  return m


def _explained(explainer, fn, key, z, t):
  return explainer(fn, z, t, key=key)


def reverse_jvp(f: Callable, x: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(f(x), J v)`` by reverse mode only (the "double VJP" trick).

  ``u -> J^T u`` is linear; its VJP with cotangent ``v`` is ``J v``. Works
  through `jax.custom_vjp` functions, which have no forward mode (the library's
  own layers all have one).
  """
  y, vjp = jax.vjp(f, x)
  _, vjp2 = jax.vjp(lambda u: vjp(u)[0], jnp.zeros_like(y))
  return y, vjp2(v)[0]


@jit_with_callables(callables=("fn", "explainer"),
                    static_argnames=("reduce", "normalize", "mode"))
def _explanation_sensitivity(fn, explainer, x, t, v, key, reduce, normalize, percentile, mode):
  m = _map_fn(fn, explainer, t, key, reduce, normalize, percentile)
  if mode == _hvp.FORWARD:
    return jax.jvp(m, (x,), (v,))[1]
  return reverse_jvp(m, x, v)[1]


def explanation_sensitivity(fn: Callable, explainer: Explainer, x: jax.Array, target: Target,
                            v: jax.Array, *, key: PRNGKey | None = None,
                            reduce: str = "abs_sum", normalize: str = "sum_to_one",
                            percentile: float = 95.0, mode: str = "auto") -> jax.Array:
  """Directional derivative of the normalised saliency map along ``v``.

  ``d/de saliency_map(explainer(fn, x + e v, target)) |_{e=0}`` for every example.
  Its norm, relative to the logit change ``grad s . v``, is how much a step
  along ``v`` moves the explanation per unit of prediction change.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    explainer: a differentiable explainer ``explainer(fn, x, target, *, key)``,
      e.g. `rattr_jax.attribution.gradient` (the gradient of the target logit).
    x: inputs ``[B, *F]``.
    target: an int or an int array ``[B]``.
    v: directions ``[B, *F]`` (data, like ``x``: positional).
    key: passed to the explainer (the same key on both sides of the
      derivative; needed by stochastic explainers only).
    reduce: channel reduction of `rattr_jax.maps.saliency_map`.
    normalize: normalisation of `rattr_jax.maps.saliency_map` (default
      ``"sum_to_one"``, Dombrowski et al.).
    percentile: winsorisation percentile (``normalize="winsorize"``).
    mode: ``"forward_over_reverse"`` (``jax.jvp`` of the map),
      ``"reverse_over_reverse"`` (double VJP, works through ``custom_vjp``) or
      ``"auto"`` (forward unless the map contains a ``custom_vjp``).

  Returns:
    The derivative of the map, shaped like ``saliency_map`` output
    (``[B, H, W]`` for NHWC images with a channel reduction). Zero for a ReLU
    network's gradient map (the gradient is piecewise constant; ``|.|`` has
    derivative 0 at 0 in JAX).

  References:
    Ghorbani, Abid, Zou, AAAI 2019; Dombrowski et al., NeurIPS 2019.
  """
  x, t = core.prepare(fn, x, target)
  v = _hvp.check_direction(v, x)
  key = core.check_optional_key(key)
  V.check_choice(reduce, core.REDUCTIONS, name="reduce")
  V.check_choice(normalize, core.NORMALIZATIONS, name="normalize")
  if not 0.0 <= float(percentile) <= 100.0:
    raise ValueError(f"`percentile` must lie in [0, 100]; got {percentile}.")
  core.check_explainer(explainer, fn, x, t, key, allow_precomputed=False,
                       what="explanation_sensitivity")
  pct = jnp.asarray(percentile, x.dtype)
  mode = _hvp.resolve_mode(mode, jax.tree_util.Partial(_explained, explainer, fn, key), x, t,
                           name="explainer")
  return _explanation_sensitivity(fn, explainer, x, t, v, key, reduce, normalize, pct, mode)
