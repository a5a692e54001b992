"""Vanilla gradient and input-times-gradient attributions."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jaxtyping import Array, Float

from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax import core


@jit_with_callables
def _gradient(fn, x, t):
  return core.target_gradient(fn, x, t)


@jit_with_callables
def _input_x_gradient(fn, x, t):
  return x * core.target_gradient(fn, x, t)


def gradient(fn: Callable, x: Float[Array, "B ..."], target: Target, *,
             key: PRNGKey | None = None) -> Float[Array, "B ..."]:
  """The raw gradient of the target logit (a.k.a. "saliency", "vanilla gradient").

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]`` (images are NHWC).
    target: class index, an int or an int array ``[B]``.
    key: ignored (deterministic); accepted so that every method is an
      explainer ``explainer(fn, x, target, *, key)``.

  Returns:
    ``d fn(x)[b, target[b]] / d x[b]`` with the shape ``[B, *F]`` of ``x``.

  References:
    Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks", 2014.
    https://arxiv.org/abs/1312.6034
  """
  x, t = core.prepare(fn, x, target)
  return _gradient(fn, x, t)


def input_x_gradient(fn: Callable, x: Float[Array, "B ..."], target: Target, *,
                     key: PRNGKey | None = None) -> Float[Array, "B ..."]:
  """Input times gradient, ``x * gradient(fn, x, target)``.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: ignored (deterministic).

  Returns:
    Attribution with the shape of ``x``.

  References:
    Shrikumar et al., "Not Just a Black Box", 2016. https://arxiv.org/abs/1605.01713
  """
  x, t = core.prepare(fn, x, target)
  return _input_x_gradient(fn, x, t)
