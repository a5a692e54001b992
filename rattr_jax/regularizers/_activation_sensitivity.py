"""Neural-activation-sensitivity regularization (Moshe et al. 2024), reconstructed.

**This is a reconstruction.** The paper's exact regularizer, its layers and its
hyper-parameters are not public (only the abstract and first page could be
read). What is implemented is the family described in
``shared/research/senn_and_activation_sensitivity.md`` (section 2), built from
the abstract, the same group's predecessor (Fidel et al. 2020, "stochastic
regularization of neural activation sensitivity": random perturbations plus a
Jacobian term) and Zhang et al.'s neuron sensitivity
``sigma_j = E |a_j(x) - a_j(x_adv)|``:

* ``form="perturbation"``:
  ``R(x) = sum_l w_l * mean_j omega_lj * |a_lj(x + delta) - a_lj(x)|``
  (``change_norm="l2"`` squares the change), with ``delta`` random (uniform or
  Gaussian at scale ``epsilon``) or adversarial (FGSM / PGD on the
  cross-entropy, stop-gradient, inference mode);
* ``form="jacobian"``:
  ``R(x) = sum_l w_l * (1/n_l) * E_v ||(sqrt(omega_l) * v)^T J_l(x)||^2``,
  ``J_l = d a_l / d x``, ``v ~ N(0, I)``: an unbiased random-projection estimate
  of ``sum_j omega_lj ||grad_x a_lj||^2 / n_l`` (one VJP per projection).

Optional per-neuron weights ``omega`` are estimated from data with
`neuron_sensitivity` (most sensitive neurons count most), and refreshed each
epoch by `rattr_jax.training`. Layers are chosen by name and read with Flax
NNX's intermediate capture (`rattr_jax.models.feature_fn`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from rattr_jax import _random
from rattr_jax import _validation as V
from rattr_jax import core
from rattr_jax._typing import Target
from rattr_jax.models import as_fn, check_layers, feature_fn
from rattr_jax.regularizers import _adversarial, _common

FORMS = ("perturbation", "jacobian")
PERTURBATIONS = ("uniform", "gaussian", "fgsm", "pgd")
CHANGE_NORMS = ("l1", "l2")


def sensitivity_delta(fn: Callable, x: jax.Array, t: jax.Array, *, key: jax.Array,
                      epsilon: jax.Array, perturbation: str, num_steps: int = 5,
                      step_size: Any = None, input_range=None) -> jax.Array:
  """The input perturbation ``delta`` (a constant) of the perturbation form."""
  if perturbation in ("uniform", "gaussian"):
    return jax.lax.stop_gradient(
        _common.random_delta(key, x.shape, x.dtype, epsilon, perturbation))
  # The public adversaries, with their own default steps (1.25 eps; 2.5 eps / num_steps).
  if perturbation == "fgsm":
    x_adv = _adversarial.fgsm_adversary(fn, x, t, key=key, epsilon=epsilon, step_size=step_size,
                                        input_range=input_range)
  else:
    x_adv = _adversarial.pgd_adversary(fn, x, t, key=key, epsilon=epsilon, step_size=step_size,
                                       num_steps=num_steps, input_range=input_range)
  return jax.lax.stop_gradient(x_adv - x)


def _weighted(change, omega):
  return change if omega is None else change * omega


def perturbation_values(features: Callable, x: jax.Array, delta: jax.Array, *,
                        layer_weights: Sequence[float], neuron_weights=None,
                        change_norm: str = "l1", clean=None) -> jax.Array:
  """``[B]`` values of the perturbation form for a given ``delta``.

  ``clean``: the features of ``x`` when the caller has them (the training
  engine's clean pass), else computed here.
  """
  clean = features(x) if clean is None else clean
  pert = features(jax.lax.stop_gradient(x + delta))
  total = jnp.zeros(x.shape[:1], x.dtype)
  for i, (a, b) in enumerate(zip(clean, pert)):
    d = b - a
    change = jnp.abs(d) if change_norm == "l1" else d * d
    omega = None if neuron_weights is None else neuron_weights[i]
    total = total + layer_weights[i] * _common.per_example_mean(_weighted(change, omega))
  return total


def jacobian_values(features: Callable, x: jax.Array, *, key: jax.Array,
                    layer_weights: Sequence[float], neuron_weights=None,
                    num_projections: int = 1) -> jax.Array:
  """``[B]`` values of the Jacobian (random-projection) form."""
  feats, vjp = jax.vjp(features, x)
  total = jnp.zeros(x.shape[:1], x.dtype)
  keys = jax.random.split(key, len(feats))
  for i, a in enumerate(feats):
    v = _random.normal(keys[i], (num_projections,) + a.shape, a.dtype)
    if neuron_weights is not None and neuron_weights[i] is not None:
      v = v * jnp.sqrt(neuron_weights[i])

    def one(vi, i=i):
      cot = tuple(vi if j == i else jnp.zeros_like(f) for j, f in enumerate(feats))
      return vjp(cot)[0]

    u = jax.vmap(one)(v)  # [P, B, *F]
    sq = jnp.sum(u.reshape(num_projections, x.shape[0], -1) ** 2, axis=-1)  # [P, B]
    n_l = a[0].size
    total = total + layer_weights[i] * jnp.mean(sq, axis=0) / n_l
  return total


def activation_sensitivity_values(features: Callable, fn: Callable, x: jax.Array, t: jax.Array,
                                  *, key: jax.Array, form: str, perturbation: str,
                                  epsilon: jax.Array, num_steps: int = 5, step_size: Any = None,
                                  num_samples: int = 1, num_projections: int = 1,
                                  layer_weights: Sequence[float], neuron_weights=None,
                                  change_norm: str = "l1", input_range=None,
                                  clean=None) -> jax.Array:
  """Unvalidated core: ``features(x) -> tuple of [B, ...]``, ``fn`` attacked (eval mode).

  ``clean``: precomputed ``features(x)`` for the perturbation form (ignored by
  the Jacobian form, which differentiates ``features`` at ``x``).
  """
  if form == "jacobian":
    return jacobian_values(features, x, key=key, layer_weights=layer_weights,
                           neuron_weights=neuron_weights, num_projections=num_projections)

  def one(k):
    delta = sensitivity_delta(fn, x, t, key=k, epsilon=epsilon, perturbation=perturbation,
                              num_steps=num_steps, step_size=step_size, input_range=input_range)
    return perturbation_values(features, x, delta, layer_weights=layer_weights,
                               neuron_weights=neuron_weights, change_norm=change_norm, clean=clean)

  if num_samples == 1:
    return one(key)
  keys = jax.random.split(key, num_samples)
  return jnp.mean(jax.vmap(one)(keys), axis=0)


def _as_tuple_features(features: Callable) -> Callable:
  def f(z):
    out = features(z)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
  return f


def _check_settings(fn, x, target, key, form, perturbation, epsilon, num_steps, num_samples,
                    num_projections, change_norm):
  """The checks `activation_sensitivity` and `feature_sensitivity` share (trace-safe)."""
  x, t = _common.prepare(fn, x, 0 if target is None else target)
  V.check_key(key)
  V.check_choice(form, FORMS, name="form")
  V.check_choice(perturbation, PERTURBATIONS, name="perturbation")
  V.check_choice(change_norm, CHANGE_NORMS, name="change_norm")
  if perturbation in ("fgsm", "pgd") and target is None and form == "perturbation":
    raise ValueError("`target` is required for adversarial perturbations ('fgsm', 'pgd').")
  eps = _common.check_epsilon(epsilon, x)
  num_steps = V.check_positive_int(num_steps, name="num_steps")
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  num_projections = V.check_positive_int(num_projections, name="num_projections")
  return x, t, eps, num_steps, num_samples, num_projections


def feature_sensitivity(features: Callable, fn: Callable, x: Float[Array, "B ..."],
                        target: Target | None = None, *, key: jax.Array,
                        form: str = "perturbation", perturbation: str = "uniform",
                        epsilon: Any = 0.1, num_steps: int = 5, step_size: Any = None,
                        num_samples: int = 1, num_projections: int = 1,
                        layer_weights: Sequence[float] | None = None,
                        neuron_weights: Sequence[Any] | None = None, change_norm: str = "l1",
                        input_range: tuple[float, float] | None = (0.0, 1.0),
                        clean: Sequence[jax.Array] | None = None) -> jax.Array:
  """`activation_sensitivity` of a feature function: ``[B]`` per-example values.

  The building block for losses that already hold the model's pieces, e.g. a
  training term with the engine's traced model (`rattr_jax.training`): it takes
  the hidden features and the classifier as functions instead of an NNX model,
  does not jit (the caller's ``jit`` compiles it), and accepts the clean
  features the caller has already computed. Its checks work on tracers.

  Args:
    features: ``features(x) -> [B, ...]`` or a tuple of them (one per layer),
      e.g. ``rattr_jax.models.feature_fn(model, layers)``.
    fn: the classifier ``[B, *F] -> [B, C]`` that FGSM/PGD perturbations attack
      (inference mode).
    x, target, key, form, perturbation, epsilon, num_steps, step_size,
    num_samples, num_projections, layer_weights, neuron_weights, change_norm,
    input_range: as in `activation_sensitivity` (``neuron_weights`` unchecked
      against the layer shapes here).
    clean: ``features(x)`` when the caller has it (the perturbation form then
      runs ``features`` once, on ``x + delta``); ignored by the Jacobian form.

  Returns:
    ``[B]`` per-example values.
  """
  x, t, eps, num_steps, num_samples, num_projections = _check_settings(
      fn, x, target, key, form, perturbation, epsilon, num_steps, num_samples, num_projections,
      change_norm)
  input_range = core.check_input_range(input_range)
  feats = _as_tuple_features(features)
  n = len(jax.eval_shape(feats, jax.ShapeDtypeStruct(x.shape, x.dtype)))
  lw = check_layer_weights(layer_weights, ("layer",) * n)
  nw = None if neuron_weights is None else tuple(neuron_weights)
  if nw is not None and len(nw) != n:
    raise ValueError(f"`neuron_weights` needs one array per layer ({n}); got {len(nw)}.")
  if clean is not None:
    clean = tuple(clean) if isinstance(clean, (tuple, list)) else (clean,)
  return activation_sensitivity_values(
      feats, fn, x, t, key=key, form=form, perturbation=perturbation, epsilon=eps,
      num_steps=num_steps, step_size=step_size, num_samples=num_samples,
      num_projections=num_projections, layer_weights=lw, neuron_weights=nw, change_norm=change_norm,
      input_range=input_range, clean=clean)


def feature_neuron_sensitivity(features: Callable, fn: Callable, x: Float[Array, "B ..."],
                               target: Target | None = None, *, key: jax.Array,
                               perturbation: str = "uniform", epsilon: Any = 0.1,
                               num_steps: int = 5, step_size: Any = None,
                               input_range: tuple[float, float] | None = (0.0, 1.0),
                               spatial_mean: bool = True,
                               normalize: bool = True) -> tuple[jax.Array, ...]:
  """`neuron_sensitivity` of a feature function (not jitted; checks work on tracers).

  Args:
    features, fn: as in `feature_sensitivity`.
    x, target, key, perturbation, epsilon, num_steps, step_size, input_range,
    spatial_mean, normalize: as in `neuron_sensitivity`.

  Returns:
    One array per layer, as `neuron_sensitivity`.
  """
  x, t, eps, num_steps, *_ = _check_settings(fn, x, target, key, "perturbation", perturbation,
                                             epsilon, num_steps, 1, 1, "l1")
  input_range = core.check_input_range(input_range)
  return neuron_sensitivity_core(_as_tuple_features(features), fn, x, t, key, eps, step_size,
                                 perturbation=perturbation, num_steps=num_steps,
                                 input_range=input_range, spatial_mean=bool(spatial_mean),
                                 normalize=bool(normalize))


def _check_args(model, x, target, layers, key, form, perturbation, epsilon, num_steps,
                num_samples, num_projections, layer_weights, neuron_weights, change_norm,
                reduction):
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be a Flax NNX module; got {type(model).__name__}.")
  fn = as_fn(model)
  V.check_choice(reduction, _common.REDUCTIONS, name="reduction")
  x, t, eps, num_steps, num_samples, num_projections = _check_settings(
      fn, x, target, key, form, perturbation, epsilon, num_steps, num_samples, num_projections,
      change_norm)
  layers = check_layers(model, layers, x)
  lw = check_layer_weights(layer_weights, layers)
  nw = check_neuron_weights(neuron_weights, model, layers, x)
  return fn, x, t, layers, eps, num_steps, num_samples, num_projections, lw, nw


def check_layer_weights(layer_weights, layers) -> tuple[float, ...]:
  if layer_weights is None:
    return (1.0,) * len(layers)
  lw = tuple(layer_weights)
  if len(lw) != len(layers):
    raise ValueError(f"`layer_weights` needs one weight per layer ({len(layers)}); got {len(lw)}.")
  for w in lw:
    V.check_nonnegative(w, name="layer_weights")
  return lw


def check_neuron_weights(neuron_weights, model, layers, x):
  if neuron_weights is None:
    return None
  nw = tuple(neuron_weights)
  if len(nw) != len(layers):
    raise ValueError(f"`neuron_weights` needs one array per layer ({len(layers)}); got {len(nw)}.")
  shapes = jax.eval_shape(feature_fn(model, layers),
                          jax.ShapeDtypeStruct(x.shape, x.dtype))
  out = []
  for name, w, s in zip(layers, nw, shapes):
    w = jnp.asarray(w, x.dtype)
    V.check_nonnegative(w, name="neuron_weights")
    try:
      ok = jnp.broadcast_shapes(w.shape, s.shape[1:]) == tuple(s.shape[1:])
    except ValueError:
      ok = False
    if not ok:
      raise ValueError(f"`neuron_weights` for layer {name!r} must broadcast to "
                       f"{tuple(s.shape[1:])}; got shape {tuple(w.shape)}.")
    out.append(w)
  return tuple(out)


def activation_sensitivity(model: nnx.Module, x: Float[Array, "B ..."],
                           target: Target | None = None, *, layers: str | Sequence[str],
                           key: jax.Array, form: str = "perturbation",
                           perturbation: str = "uniform", epsilon: Any = 0.1,
                           num_steps: int = 5, step_size: Any = None, num_samples: int = 1,
                           num_projections: int = 1,
                           layer_weights: Sequence[float] | None = None,
                           neuron_weights: Sequence[Any] | None = None, change_norm: str = "l1",
                           input_range: tuple[float, float] | None = (0.0, 1.0),
                           train: bool = False,
                           reduction: str = "mean") -> jax.Array:
  """Sensitivity of hidden activations to small input perturbations (reconstruction).

  See the module docstring for the two forms and why they are a
  reconstruction of Moshe et al. (2024). Lower is better (activations that
  move less under small input changes). With ``epsilon = 0`` the
  perturbation form is exactly zero.

  To differentiate with respect to the parameters, call it inside a loss on
  a model merged from traced parameters (``nnx.merge(graphdef, params)``), as
  `rattr_jax.training` does.

  Args:
    model: a Flax NNX classifier ``[B, *F] -> [B, C]``.
    x: inputs ``[B, *F]``.
    target: true classes (needed only for ``"fgsm"``/``"pgd"`` perturbations).
    layers: a layer name or names (see `rattr_jax.models.layer_names`); an
      unknown name raises ``ValueError`` listing the available ones.
    key: PRNG key.
    form: ``"perturbation"`` or ``"jacobian"``.
    perturbation: ``"uniform"`` (``epsilon * U[-1, 1]``), ``"gaussian"``
      (``epsilon * N(0, I)``), ``"fgsm"`` or ``"pgd"`` (l-inf adversarial
      examples of the cross-entropy, radius ``epsilon``, computed in inference
      mode and treated as constants). Perturbation form only.
    epsilon: perturbation scale (traced), scalar or broadcastable to ``x[0]``.
    num_steps: PGD steps.
    step_size: FGSM/PGD step (default ``1.25 eps`` / ``2.5 eps / num_steps``).
    num_samples: random perturbations averaged per call.
    num_projections: random projections of the Jacobian form.
    layer_weights: weight per layer (default 1 each).
    neuron_weights: optional per-neuron weights ``omega``, one non-negative
      array per layer broadcastable to that layer's per-example shape (e.g.
      ``[C]`` for a conv layer), e.g. from `neuron_sensitivity`.
    change_norm: ``"l1"`` (mean absolute change) or ``"l2"`` (mean squared change).
    input_range: data range for adversarial perturbations, or ``None``.
    train: read features in training mode (BatchNorm batch statistics).
    reduction: ``"mean"`` over the batch or ``"none"`` (``[B]``).

  Returns:
    A scalar, or ``[B]`` per-example values.

  References:
    Moshe, Fidel, Bitton, Shabtai, "Improving interpretability via
    regularization of neural activation sensitivity", Machine Learning 113,
    2024. https://doi.org/10.1007/s10994-024-06549-4
    Fidel, Bitton, Katzir, Shabtai, "Adversarial robustness via stochastic
    regularization of neural activation sensitivity", 2020.
    https://arxiv.org/abs/2009.11349
  """
  fn, x, t, layers, eps, num_steps, num_samples, num_projections, lw, nw = _check_args(
      model, x, target, layers, key, form, perturbation, epsilon, num_steps, num_samples,
      num_projections, layer_weights, neuron_weights, change_norm, reduction)
  input_range = core.check_input_range(input_range)
  features = feature_fn(model, layers, train=train)
  vals = _activation_sensitivity_jit(features, fn, x, t, key, eps, step_size, nw, form=form,
                                     perturbation=perturbation, num_steps=num_steps,
                                     num_samples=num_samples, num_projections=num_projections,
                                     layer_weights=lw, change_norm=change_norm,
                                     input_range=input_range)
  return _common.reduce(vals, reduction)


@functools.partial(jax.jit, static_argnames=("form", "perturbation", "num_steps", "num_samples",
                                             "num_projections", "layer_weights", "change_norm",
                                             "input_range"))
def _activation_sensitivity_jit(features, fn, x, t, key, eps, step_size, nw, *, form, perturbation,
                                num_steps, num_samples, num_projections, layer_weights, change_norm,
                                input_range):
  return activation_sensitivity_values(
      features, fn, x, t, key=key, form=form, perturbation=perturbation, epsilon=eps,
      num_steps=num_steps, step_size=step_size, num_samples=num_samples,
      num_projections=num_projections, layer_weights=layer_weights, neuron_weights=nw,
      change_norm=change_norm, input_range=input_range)


def neuron_sensitivity(model: nnx.Module, x: Float[Array, "B ..."], target: Target | None = None,
                       *, layers: str | Sequence[str], key: jax.Array,
                       perturbation: str = "uniform", epsilon: Any = 0.1, num_steps: int = 5,
                       step_size: Any = None, input_range: tuple[float, float] | None = (0.0, 1.0),
                       spatial_mean: bool = True, normalize: bool = True) -> tuple[jax.Array, ...]:
  """Per-neuron sensitivity ``sigma_j = mean_b |a_j(x_b + delta_b) - a_j(x_b)|`` (Zhang et al.).

  Use the result as ``neuron_weights`` of `activation_sensitivity`, estimated
  on a held-out batch and refreshed as the model trains.

  Args:
    model, x, target, layers, key, perturbation, epsilon, num_steps, step_size,
    input_range: as in `activation_sensitivity`.
    spatial_mean: average conv feature maps ``[B, H, W, C]`` over space, giving
      per-channel sensitivities ``[C]`` (MindArmour's convention).
    normalize: divide by the mean so that the weights average to 1 per layer.

  Returns:
    One array per layer: ``[C]`` for spatially averaged maps, else the
    per-example feature shape. Higher means more sensitive.
  """
  fn, x, t, layers, eps, num_steps, *_ = _check_args(
      model, x, target, layers, key, "perturbation", perturbation, epsilon, num_steps, 1, 1,
      None, None, "l1", "mean")
  input_range = core.check_input_range(input_range)
  features = feature_fn(model, layers)
  return _neuron_sensitivity_jit(features, fn, x, t, key, eps, step_size,
                                 perturbation=perturbation, num_steps=num_steps,
                                 input_range=input_range,
                                 spatial_mean=spatial_mean, normalize=normalize)


def neuron_sensitivity_core(features, fn, x, t, key, eps, step_size, *, perturbation, num_steps,
                            input_range, spatial_mean=True, normalize=True):
  delta = sensitivity_delta(fn, x, t, key=key, epsilon=eps, perturbation=perturbation,
                            num_steps=num_steps, step_size=step_size, input_range=input_range)
  out = []
  for a, b in zip(features(x), features(x + delta)):
    s = jnp.mean(jnp.abs(b - a), axis=0)
    if spatial_mean and s.ndim == 3:
      s = jnp.mean(s, axis=(0, 1))
    if normalize:
      s = s / jnp.maximum(jnp.mean(s), 1e-12)
    out.append(jax.lax.stop_gradient(s))
  return tuple(out)


@functools.partial(jax.jit, static_argnames=("perturbation", "num_steps", "input_range",
                                             "spatial_mean", "normalize"))
def _neuron_sensitivity_jit(features, fn, x, t, key, eps, step_size, *, perturbation, num_steps,
                            input_range, spatial_mean, normalize):
  return neuron_sensitivity_core(features, fn, x, t, key, eps, step_size,
                                 perturbation=perturbation, num_steps=num_steps,
                                 input_range=input_range,
                                 spatial_mean=spatial_mean, normalize=normalize)
