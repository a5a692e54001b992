"""Vanilla gradient and input-times-gradient attributions."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jaxtyping import Array, Float

from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax import _validation as V
from rattr_jax import core


@functools.partial(jit_with_callables, static_argnames=("chunk_size",))
def _gradient(fn, x, t, chunk_size=None):
  return core.chunk_examples(lambda a: core.target_gradient(fn, *a), (x, t), chunk_size)


@functools.partial(jit_with_callables, static_argnames=("chunk_size",))
def _input_x_gradient(fn, x, t, chunk_size=None):
  return x * core.chunk_examples(lambda a: core.target_gradient(fn, *a), (x, t), chunk_size)


def gradient(fn: Callable, x: Float[Array, "B ..."], target: Target, *,
             key: PRNGKey | None = None, chunk_size: int | None = None
             ) -> Float[Array, "B ..."]:
  """The raw gradient of the target logit (a.k.a. "saliency", "vanilla gradient").

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]`` (images are NHWC).
    target: class index, an int or an int array ``[B]``.
    key: ignored (deterministic); accepted so that every method is an
      explainer ``explainer(fn, x, target, *, key)``.
    chunk_size: examples differentiated at once (bounds memory: the backward
      pass of a large batch holds every activation); ``None`` = all.

  Returns:
    ``d fn(x)[b, target[b]] / d x[b]`` with the shape ``[B, *F]`` of ``x``.

  References:
    Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks", 2014.
    https://arxiv.org/abs/1312.6034
  """
  x, t = core.prepare(fn, x, target)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  return _gradient(fn, x, t, chunk_size)


def input_x_gradient(fn: Callable, x: Float[Array, "B ..."], target: Target, *,
                     key: PRNGKey | None = None, chunk_size: int | None = None
                     ) -> Float[Array, "B ..."]:
  """Input times gradient, ``x * gradient(fn, x, target)``.

  Args:
    fn: model, mapping a batch ``[B, *F]`` to logits ``[B, C]``.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: ignored (deterministic).
    chunk_size: examples differentiated at once (memory bound); ``None`` = all.

  Returns:
    Attribution with the shape of ``x``.

  References:
    Shrikumar et al., "Not Just a Black Box", 2016. https://arxiv.org/abs/1605.01713
  """
  x, t = core.prepare(fn, x, target)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  return _input_x_gradient(fn, x, t, chunk_size)
