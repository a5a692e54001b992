"""Saliency fidelity (DANCE): does keeping the salient features keep the prediction?"""

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


@jit_with_callables(callables=("fn", "explainer"),
                    static_argnames=("reduce", "normalize"))
def _saliency_fidelity(fn, explainer, x, t, key, reduce, normalize, percentile):
  attr = explainer(fn, x, t, key=core.call_key(key, 0))
  m = core.normalize_map(core.reduce_channels(attr, reduce), normalize, percentile)
  e = m[..., None] if m.ndim < x.ndim else m                 # pixel maps cover all channels
  axes = tuple(range(1, m.ndim))
  e_bar = jnp.mean(m, axis=axes).reshape((-1,) + (1,) * (x.ndim - 1))
  logp = lambda z: core.target_logits(lambda u: jax.nn.log_softmax(fn(u), -1), z, t)  # noqa: E731
  return logp(e_bar * x) - logp(e * x)


def saliency_fidelity(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                      target: Target, *, key: PRNGKey | None = None, reduce: str = "max_abs",
                      normalize: str = "winsorize",
                      percentile: float = 95.0) -> Float[Array, "B"]:
  """DANCE saliency fidelity ``SF = -log(F_c(E * x) / F_c(E_bar * x))``.

  ``E`` is the saliency map of the explainer's attribution used as a soft mask
  on the input, ``E_bar`` its per-example mean (a constant mask with the same
  total mass), and ``F_c`` the softmax probability of class ``c = target``. SF
  compares keeping the input weighted by the map against weighting it
  uniformly: a map that puts its mass on the features the model uses keeps
  ``F_c`` higher than the uniform mask. **Lower is better** (negative: the
  map beats the uniform mask); a constant map gives exactly 0. Computed with
  log-softmax differences for stability.

  The map is the paper's post-processing of the attribution: ``reduce``
  (absolute value and max over channels), then ``normalize`` (95th-percentile
  winsorisation and rescaling to [0, 1]), i.e.
  ``rattr_jax.maps.saliency_map(attr, reduce="max_abs", normalize="winsorize")``.
  For maps that are already post-processed, pass them as
  ``rattr_jax.explainers.precomputed(maps)`` with ``normalize="none"``.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    explainer: ``explainer(fn, x, target, *, key)``, or
      ``rattr_jax.explainers.precomputed(maps)`` for saved attributions.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: forwarded to the explainer (needed by stochastic ones only).
    reduce: channel reduction of NHWC attributions (`rattr_jax.maps.saliency_map`);
      a pixel map weights all channels of its pixel.
    normalize: per-example normalisation of the map (``none``, ``max``,
      ``winsorize``, ...).
    percentile: the winsorisation percentile, in [0, 100].

  Returns:
    ``[B]`` fidelity values (lower is better).

  References:
    Lu, Guo, Xing, Noble, "Improving Interpretability of Deep Neural Networks
    with Decoy-Enhanced Saliency Maps", ICML 2021. https://arxiv.org/abs/2002.00526
  """
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=False,
                                        what="saliency_fidelity")
  V.check_choice(reduce, core.REDUCTIONS, name="reduce")
  V.check_choice(normalize, core.NORMALIZATIONS, name="normalize")
  if not 0.0 <= float(percentile) <= 100.0:
    raise ValueError(f"`percentile` must lie in [0, 100]; got {percentile}.")
  return _saliency_fidelity(fn, explainer, x, t, key, reduce, normalize,
                            jnp.asarray(percentile, x.dtype))
