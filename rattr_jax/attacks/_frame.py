"""The frame attack of Joo et al. (AGA evaluation): pull the map onto the image border."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rattr_jax import _validation as V
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.attacks._base import AttackResult, ManipulationConfig
from rattr_jax.attacks._dombrowski import manipulation_attack


def default_frame_width(height: int) -> int:
  """5 px on 32x32 and 35 px on 224x224 in the paper: about 5/32 of the side."""
  return max(1, int(round(5 * height / 32)))


def frame_map(height: int, width: int, *, frame_width: int | None = None,
              dtype=jnp.float32) -> jax.Array:
  """A ``[height, width]`` map of ones on a border of ``frame_width`` pixels, zeros inside.

  Args:
    height, width: map size.
    frame_width: border width in pixels; default `default_frame_width`
      (5 px for 32x32, 4 px for 28x28, 35 px for 224x224).

  References:
    Joo et al., "Towards More Robust Interpretation via Local Gradient
    Alignment", AAAI 2023 (``test_taps_saps.py``).
  """
  height = V.check_positive_int(height, name="height")
  width = V.check_positive_int(width, name="width")
  fw = default_frame_width(min(height, width)) if frame_width is None else (
      V.check_positive_int(frame_width, name="frame_width"))
  if 2 * fw >= min(height, width):
    raise ValueError(f"`frame_width` ({fw}) must be less than half of the map side "
                     f"({min(height, width)}).")
  r = jnp.arange(height)[:, None]
  c = jnp.arange(width)[None, :]
  inside = (r >= fw) & (r < height - fw) & (c >= fw) & (c < width - fw)
  return jnp.where(inside, 0.0, 1.0).astype(dtype)


def frame_config(*, epsilon: float = 4.0 / 255.0, num_steps: int = 100,
                 **kwargs) -> ManipulationConfig:
  """The AGA evaluation setting: Adam with ``lr = 4 epsilon / T``, ``T = 100``,
  an ``epsilon``-ball (default 4/255), max-normalised maps and ``gamma = 1``.

  AGA weights the map and output terms equally (0.5 / 0.5 on logits); here
  ``gamma = 1`` weights them equally on the softmax change. Other fields of
  `ManipulationConfig` can be overridden with ``kwargs``.
  """
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  settings = dict(learning_rate=4.0 * epsilon / num_steps, epsilon=epsilon, gamma=1.0,
                  num_steps=num_steps, normalize="max")
  settings.update(kwargs)
  return ManipulationConfig(**settings)


def frame_attack(fn, explainer, x: jax.Array, target: Target, *, key: PRNGKey,
                 config: ManipulationConfig | None = None, surrogate=None,
                 surrogate_family=None, frame_width: int | None = None,
                 chunk_size: int | None = None) -> AttackResult:
  """Frame attack: `manipulation_attack` towards a frame-shaped target map.

  The target is `frame_map` on the image border; with the default
  `frame_config` (``epsilon = 4/255``, ``T = 100`` Adam steps of
  ``lr = 4 epsilon / T``, projected to the ball). **Higher objective (lower
  distance to the frame) = stronger attack**; `rattr_jax.metrics` (SSIM,
  Pearson to the frame and to the original map) give AGA's TAPS / SAPS.

  Args:
    fn, explainer, x, target, key, surrogate, surrogate_family, chunk_size: as in
      `manipulation_attack`; ``x`` must be NHWC images.
    config: a `ManipulationConfig`; default `frame_config()`.
    frame_width: border width in pixels (default `default_frame_width`).

  Returns:
    `AttackResult`.

  References:
    Joo et al., "Towards More Robust Interpretation via Local Gradient
    Alignment", AAAI 2023. https://arxiv.org/abs/2211.15900
  """
  x = V.check_image_batch(x)
  target_map = frame_map(x.shape[1], x.shape[2], frame_width=frame_width, dtype=x.dtype)
  return manipulation_attack(fn, explainer, x, target, key=key, target_map=target_map,
                             config=frame_config() if config is None else config,
                             surrogate=surrogate, surrogate_family=surrogate_family,
                             chunk_size=chunk_size)
