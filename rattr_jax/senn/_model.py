"""The self-explaining neural network: concepts, relevances and an additive aggregator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
from flax import nnx

from rattr_jax import _validation as V
from rattr_jax.senn import _conceptizers as C
from rattr_jax.senn import _parametrizers as P
from rattr_jax.senn._aggregators import AGGREGATORS, Aggregator, as_aggregator


class SENNExplanation(NamedTuple):
  """What a SENN says about each input.

  Attributes:
    theta: relevances ``[B, k, T]`` (``T = C`` for softmax, 1 for sigmoid).
    h: concepts ``[B, k]`` (identity concepts end with the constant 1).
    x_hat: the conceptizer's reconstruction ``[B, *F]`` (``x`` for identity).
  """

  theta: jax.Array
  h: jax.Array
  x_hat: jax.Array


class SENN(nnx.Module):
  """Self-explaining neural network ``f(x) = g(theta_1(x) h_1(x), ..., theta_k(x) h_k(x))``.

  The logit of class ``c`` is ``sum_i theta_ic(x) h_i(x)`` (see `Aggregator`).
  ``model(x)`` returns logits ``[B, C]`` so a SENN works with every rattr_jax
  function (`rattr_jax.models.as_fn`, attributions, the training engine);
  ``model(x, return_explanation=True)`` returns ``(logits, SENNExplanation)``.

  Args:
    conceptizer: a module ``x -> (h [B, k], x_hat)`` (`IdentityConceptizer`,
      `ConvConceptizer`).
    parametrizer: a module ``(x, *, key) -> theta [B, k, T]``.
    num_classes: ``C``.
    aggregator: ``"softmax"`` or ``"sigmoid"`` (binary), or an `Aggregator`.

  References:
    Alvarez-Melis, Jaakkola, "Towards Robust Interpretability with
    Self-Explaining Neural Networks", NeurIPS 2018. https://arxiv.org/abs/1806.07538
  """

  def __init__(self, conceptizer: nnx.Module, parametrizer: nnx.Module, *, num_classes: int,
               aggregator: "Aggregator | str" = "softmax"):
    self.aggregator = as_aggregator(aggregator)
    t = self.aggregator.num_outputs(num_classes)
    if parametrizer.num_concepts != conceptizer.num_concepts:
      raise ValueError(f"The parametrizer has {parametrizer.num_concepts} concepts but the "
                       f"conceptizer {conceptizer.num_concepts}.")
    if parametrizer.num_outputs != t:
      raise ValueError(f"The parametrizer has {parametrizer.num_outputs} outputs per concept; "
                       f"aggregator {self.aggregator.kind!r} with {num_classes} classes needs {t}.")
    self.conceptizer = conceptizer
    self.parametrizer = parametrizer
    self.num_classes = int(num_classes)
    self.num_concepts = int(conceptizer.num_concepts)

  def concepts(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(h [B, k], x_hat [B, *F])``."""
    return self.conceptizer(x)

  def relevances(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    """``theta [B, k, T]``; dropout only when ``key`` is given."""
    return self.parametrizer(x, key=key)

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None,
               return_explanation: bool = False):
    h, x_hat = self.concepts(x)
    theta = self.relevances(x, key=key)
    logits = self.aggregator(theta, h)
    if return_explanation:
      return logits, SENNExplanation(theta, h, x_hat)
    return logits


def senn_fn(model: SENN):
  """``fn(x) -> logits`` of a SENN (inference mode, no dropout); an alias of `as_fn`."""
  from rattr_jax.models import as_fn
  return as_fn(model)


def _default_parts(input_shape):
  if len(input_shape) == 3:
    return "autoencoder", ("lenet" if input_shape[-1] == 1 else "vgg")
  return "identity", "mlp"


def create_senn(*, input_shape: Sequence[int], num_classes: int, conceptizer: str | None = None,
                parametrizer: str | None = None, num_concepts: int | None = None,
                aggregator: str = "softmax", hidden: Sequence[int] | None = None,
                widths: Sequence[int] | None = None, dropout: float = 0.0,
                bias: bool = True, conv_impl: str = "auto", seed: int = 0) -> SENN:
  """Builds a SENN from component names, validating the combination.

  Args:
    input_shape: one example's shape, ``(H, W, C)`` or ``(F,)``.
    num_classes: number of classes ``C`` (``2`` for ``aggregator="sigmoid"``).
    conceptizer: ``"autoencoder"`` (images; default for images) or
      ``"identity"`` (default for tabular).
    parametrizer: ``"lenet"`` (default for 1-channel images), ``"vgg"``
      (default for 3-channel images) or ``"mlp"`` (default for tabular).
    num_concepts: ``k`` for the autoencoder (default 5, the paper's MNIST
      value); for ``identity`` it is ``F + 1`` and may be omitted.
    aggregator: ``"softmax"`` or ``"sigmoid"``.
    hidden: MLP hidden sizes (default (10, 10, 5)) or VGG head sizes.
    widths: VGG conv widths (default (64, 128, 256, 512, 512)).
    dropout: parametrizer dropout rate, applied only when a key is passed.
    bias: append the constant-1 concept to identity concepts.
    conv_impl: convolution autodiff implementation.
    seed: parameter initialisation seed.

  Raises:
    ValueError: an unknown name, ``num_concepts <= 0``, or a combination that
      does not fit the input shape.
  """
  input_shape = tuple(int(d) for d in input_shape)
  num_classes = V.check_positive_int(num_classes, name="num_classes")
  if num_classes < 2:
    raise ValueError(f"`num_classes` must be >= 2; got {num_classes}.")
  dc, dp = _default_parts(input_shape)
  conceptizer = dc if conceptizer is None else conceptizer
  parametrizer = dp if parametrizer is None else parametrizer
  V.check_choice(conceptizer, C.CONCEPTIZERS, name="conceptizer")
  V.check_choice(parametrizer, P.PARAMETRIZERS, name="parametrizer")
  V.check_choice(aggregator, AGGREGATORS, name="aggregator")
  if num_concepts is not None:
    num_concepts = V.check_positive_int(num_concepts, name="num_concepts")
  if not 0.0 <= float(dropout) < 1.0:
    raise ValueError(f"`dropout` must lie in [0, 1); got {dropout}.")
  agg = Aggregator(aggregator)
  t = agg.num_outputs(num_classes)
  rngs = nnx.Rngs(seed)
  is_image = len(input_shape) == 3
  if conceptizer == "autoencoder":
    if not is_image or input_shape[0] != input_shape[1]:
      raise ValueError("`conceptizer`='autoencoder' needs square images (H, W, C); got "
                       f"`input_shape` {input_shape}.")
    k = 5 if num_concepts is None else num_concepts
    con = C.ConvConceptizer(k, in_channels=input_shape[-1], image_size=input_shape[0],
                            conv_impl=conv_impl, rngs=rngs)
  else:
    con = C.IdentityConceptizer(C.num_features(input_shape), bias=bias)
    if num_concepts is not None and num_concepts != con.num_concepts:
      raise ValueError(f"`num_concepts` for identity concepts is the number of features"
                       f"{' + 1' if bias else ''} = {con.num_concepts}; got {num_concepts}.")
  k = con.num_concepts
  if parametrizer == "mlp":
    par = P.MLPParametrizer(C.num_features(input_shape), k, t,
                            hidden=(10, 10, 5) if hidden is None else hidden,
                            dropout=dropout, rngs=rngs)
  else:
    if not is_image or input_shape[0] != input_shape[1]:
      raise ValueError(f"`parametrizer`={parametrizer!r} needs square images (H, W, C); got "
                       f"`input_shape` {input_shape}.")
    if parametrizer == "lenet":
      par = P.LeNetParametrizer(k, t, in_channels=input_shape[-1], image_size=input_shape[0],
                                dropout=dropout, conv_impl=conv_impl, rngs=rngs)
    else:
      kw = {}
      if widths is not None:
        kw["widths"] = tuple(widths)
      if hidden is not None:
        kw["hidden"] = tuple(hidden)
      par = P.VGGParametrizer(k, t, in_channels=input_shape[-1], image_size=input_shape[0],
                              dropout=dropout, conv_impl=conv_impl, rngs=rngs, **kw)
  return SENN(con, par, num_classes=num_classes, aggregator=agg)
