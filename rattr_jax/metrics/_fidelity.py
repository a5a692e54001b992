"""Saliency fidelity (DANCE): does keeping the salient features keep the prediction?"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import Target
from rattr_jax import core


def _broadcast_map(saliency: jax.Array, x: jax.Array) -> jax.Array:
  if saliency.shape == x.shape:
    return saliency
  if x.ndim == 4 and saliency.shape == x.shape[:3]:
    return saliency[..., None]
  raise ValueError(
      f"`saliency` must have the shape of `x` {tuple(x.shape)} or, for NHWC images, "
      f"{tuple(x.shape[:3])}; got {tuple(saliency.shape)}.")


@jit_with_callables
def _saliency_fidelity(fn, x, saliency, t):
  e = _broadcast_map(saliency, x)
  axes = tuple(range(1, saliency.ndim))
  e_bar = jnp.mean(saliency, axis=axes).reshape((-1,) + (1,) * (x.ndim - 1))
  logp = lambda z: core.target_logits(lambda u: jax.nn.log_softmax(fn(u), -1), z, t)  # noqa: E731
  return logp(e_bar * x) - logp(e * x)


def saliency_fidelity(fn: Callable, x: Float[Array, "B ..."], saliency: Float[Array, "B ..."],
                      target: Target) -> Float[Array, "B"]:
  """DANCE saliency fidelity ``SF = -log(F_c(E * x) / F_c(E_bar * x))``.

  ``E`` is the saliency map used as a soft mask on the input, ``E_bar`` its
  per-example mean (a constant mask with the same total mass), and ``F_c`` the
  softmax probability of class ``c = target``. SF compares keeping the input
  weighted by the map against weighting it uniformly: a map that puts its mass
  on the features the model uses keeps ``F_c`` higher than the uniform mask.
  **Lower is better** (negative: the map beats the uniform mask); a constant
  map gives exactly 0. Computed with log-softmax differences for stability.

  The map should be the paper's post-processed map in [0, 1] (absolute value,
  max over channels, 95th-percentile winsorisation, rescaling), i.e.
  ``rattr_jax.maps.saliency_map(attr, reduce="max_abs", normalize="winsorize")``;
  no normalisation is applied here.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    saliency: maps with the shape of ``x``, or ``[B, H, W]`` for NHWC images
      (broadcast over channels).
    target: class index, an int or an int array ``[B]``.

  Returns:
    ``[B]`` fidelity values (lower is better).

  References:
    Lu, Guo, Xing, Noble, "Improving Interpretability of Deep Neural Networks
    with Decoy-Enhanced Saliency Maps", ICML 2021. https://arxiv.org/abs/2002.00526
  """
  x, t = core.prepare(fn, x, target)
  s = V.check_batch(saliency, name="saliency")
  _broadcast_map(s, x)
  return _saliency_fidelity(fn, x, s.astype(x.dtype), t)
