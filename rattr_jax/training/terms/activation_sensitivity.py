"""Activation sensitivity of hidden layers (optionally per-neuron weighted) as a training term."""

from __future__ import annotations

import jax.numpy as jnp

from rattr_jax import regularizers
from rattr_jax.models import as_fn, check_layers, feature_fn
from rattr_jax.training._term import check_radius, register_term, Term


def _clean_features(ctx, layers):
  """The clean pass's features of ``layers`` when the engine captured them, else ``None``."""
  if all(name in ctx.features for name in layers):
    return tuple(ctx.features[name] for name in layers)
  return None


@register_term
class ActivationSensitivity(Term):
  """``lam`` times the activation sensitivity of ``layers``
  (`rattr_jax.regularizers.activation_sensitivity`).

  Attributes:
    lam: weight.
    layers: layer names (`rattr_jax.models.feature_fn`), e.g. ``("fc1",)``.
    epsilon: radius of the input perturbation in input units.
    form: ``perturbation`` or ``jacobian``.
    perturbation: the input perturbation: ``uniform``, ``gaussian``, ``fgsm`` or ``pgd``.
    num_steps, step_size: the PGD perturbation's steps (``None``: its default step).
    num_samples: random perturbations per step.
    num_projections: random projections of the Jacobian form.
    neuron_weights: per-neuron weights estimated from data at the start of
      every epoch (`rattr_jax.regularizers.neuron_sensitivity`).
    input_range: valid input box ``(lo, hi)`` the perturbed inputs are clipped
      to (the embedded and offline datasets lie in ``(0, 1)``); ``None``: no box.
      On the command line ``input_range=lo:hi`` or ``none``.
  """

  name = "activation_sensitivity"
  weight_field = "lam"
  choices = {"form": regularizers.SENSITIVITY_FORMS,
             "perturbation": regularizers.SENSITIVITY_PERTURBATIONS}
  aliases = {"sensitivity_perturbation": "perturbation"}

  lam: float = 1.0
  layers: tuple[str, ...] = ("fc1",)
  epsilon: float = 0.1
  form: str = "perturbation"
  perturbation: str = "uniform"
  num_steps: int = 5
  step_size: float | None = None
  num_samples: int = 1
  num_projections: int = 1
  neuron_weights: bool = False
  input_range: tuple[float, float] | None = (0.0, 1.0)

  def check(self):
    check_radius(self, "epsilon")

  def clean_layers(self):
    # The perturbation form compares features(x + delta) with the clean pass's features.
    return self.layers if self.form == "perturbation" else ()

  def prepare(self, setup):
    check_layers(setup.model, self.layers, jnp.asarray(setup.x))
    return self

  def loss(self, ctx, batch, key):
    feats = feature_fn(ctx.model(True), self.layers, train=True)
    nw = ctx.own_aux if self.neuron_weights else None
    v = regularizers.feature_sensitivity(
        feats, ctx.eval_fn, batch.x, batch.y, key=key, form=self.form,
        perturbation=self.perturbation, epsilon=jnp.asarray(self.epsilon, batch.x.dtype),
        num_steps=self.num_steps, step_size=self.step_size, num_samples=self.num_samples,
        num_projections=self.num_projections, neuron_weights=nw, input_range=self.input_range,
        clean=_clean_features(ctx, self.layers))
    return jnp.mean(v), {}

  def refresh(self):
    if not self.neuron_weights:
      return None

    def refresh(model, x, y, key):
      return regularizers.feature_neuron_sensitivity(
          feature_fn(model, self.layers), as_fn(model), x, y, key=key,
          epsilon=jnp.asarray(self.epsilon, x.dtype), step_size=self.step_size,
          perturbation=self.perturbation, num_steps=self.num_steps, input_range=self.input_range)
    return refresh
