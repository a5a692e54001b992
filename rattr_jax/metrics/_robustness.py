"""Max- and average-sensitivity of an explanation (Yeh et al., 2019).

Conventions of the two reference libraries, and ours:

=====================  ======================  =====================  ====================
setting                Captum ``sensitivity_   Quantus ``Max/Avg-     rattr_jax
                       max``                   Sensitivity``
=====================  ======================  =====================  ====================
perturbation           ``U(-r, r)`` per        ``U(-r, r)`` per       ``U(-epsilon,
                       feature                 feature                epsilon)`` per feature
radius                 ``r = 0.02``            ``r = 0.2``            ``epsilon = 0.02``
samples                10                      200                    50
numerator norm         Frobenius (= L2 of the  Frobenius (= L2 of     ``norm="l2"``
                       flattened difference)   the flattened diff.)
denominator            ``||Phi(x)||``; 0 -> 1  ``||Phi(x)||``; 0 ->   ``||Phi(x)||``;
                                               inf/NaN                0 -> 1 (Captum)
explanation            raw                     raw (``normalise=      raw
                                               False`` default)
prediction changes     ignored                 ignored (or NaN with   ``on_flip``: ignore /
                                               ``return_nan_when_     exclude / nan
                                               prediction_changes``)
=====================  ======================  =====================  ====================

We keep Captum's radius: 0.02 is a small step for inputs scaled to [0, 1]
(about 5/255), while Quantus's 0.2 moves every pixel by up to a fifth of the
range. We take 50 samples, because a maximum over 10 samples is a noisy
estimate, and Captum's guard against a zero explanation, so that an
explanation that is zero and stays zero has sensitivity 0 rather than NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import ExplainFn, PRNGKey, Target
from rattr_jax.metrics import _common as C


@jit_with_callables(callables=("explain_fn", "fn"),
                    static_argnames=("num_samples", "norm", "noise", "on_flip", "clip",
                                     "batch_size"))
def _sensitivity(explain_fn, fn, x, t, key, epsilon, num_samples, norm, noise, on_flip, clip,
                 batch_size):
  """``[2, B]``: max- and average-sensitivity (one program serves both metrics)."""
  bsz, feat = x.shape[0], x.shape[1:]
  keys = C.example_keys(key, bsz)
  phi = explain_fn(x, t)
  den = C.flat_norm(phi, norm)
  den = jnp.where(den == 0, jnp.ones_like(den), den)
  pred = None if on_flip == "ignore" else jnp.argmax(fn(x), axis=-1)

  def chunk(idx):
    xs = x[None] + C.sample_noise(keys, idx, feat, x.dtype, epsilon, noise)
    if clip is not None:
      xs = jnp.clip(xs, clip[0], clip[1])
    phis = C.explain_many(explain_fn, xs, t)
    val = C.flat_norm(phis - phi[None], norm, batch_dims=2) / den[None]
    valid = (jnp.ones(val.shape, bool) if pred is None
             else C.predict_many(fn, xs) == pred[None])
    return val, valid

  vals, valid = C.map_chunks(chunk, num_samples, batch_size)
  return jnp.stack([C.reduce_samples(vals, valid, on_flip, "max"),
                    C.reduce_samples(vals, valid, on_flip, "mean")])


def _run(explain_fn, x, target, key, num_samples, epsilon, norm, noise, fn, on_flip, clip,
         batch_size, how):
  x, t = C.prepare(x, target, fn)
  C.check_explain(explain_fn, x, t)
  key = C.check_metric_key(key, x.shape[0])
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  V.check_positive(epsilon, name="epsilon")
  V.check_choice(norm, C.NORMS, name="norm")
  V.check_choice(noise, C.NOISES, name="noise")
  C.check_flip(on_flip, fn)
  clip = C.check_clip(clip)
  batch_size = V.check_optional_positive_int(batch_size, name="batch_size")
  both = _sensitivity(explain_fn, fn, x, t, key, jnp.asarray(epsilon, x.dtype), num_samples,
                      norm, noise, on_flip, clip, batch_size)
  return both[0] if how == "max" else both[1]


def max_sensitivity(explain_fn: ExplainFn, x: Float[Array, "B ..."], target: Target, *,
                    key: PRNGKey, num_samples: int = 50, epsilon: float = 0.02,
                    norm: str = "l2", noise: str = "uniform", fn: Callable | None = None,
                    on_flip: str = "ignore", clip=None,
                    batch_size: int | None = None) -> Float[Array, "B"]:
  """Max-sensitivity: the largest relative change of the explanation under noise.

  ``SENS_max(x) = max_{s=1..N} ||Phi(x) - Phi(x + d_s)|| / ||Phi(x)||`` with
  ``d_s ~ U(-epsilon, epsilon)`` per feature (``noise="gaussian"``:
  ``N(0, epsilon^2)``). A zero ``||Phi(x)||`` is replaced by 1 (Captum). See the
  module docstring for how Captum's and Quantus's defaults differ from ours.
  **Lower is better** (0 = the explanation does not move).

  All ``N`` perturbations are explained inside one compiled program,
  ``batch_size`` samples (``batch_size * B`` inputs) per call of
  ``explain_fn``.

  Args:
    explain_fn: ``explain(x, target) -> attribution`` shaped like ``x``; it must
      treat examples independently (it is called on ``batch_size * B`` inputs).
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: one PRNG key, or ``B`` keys (one per example). Sample ``s`` of example
      ``b`` uses ``fold_in(keys[b], s)``, so results do not depend on the batch
      or on ``batch_size``.
    num_samples: number of perturbations ``N``.
    epsilon: perturbation radius (uniform) or standard deviation (gaussian).
    norm: ``"l2"`` (Frobenius of the flattened map), ``"l1"`` or ``"linf"``.
    noise: ``"uniform"`` or ``"gaussian"``.
    fn: the model ``[B, *F] -> [B, C]``, needed only when ``on_flip`` is not
      ``"ignore"``.
    on_flip: what to do with perturbations that change ``argmax fn``:
      ``"ignore"`` (count them, as Captum), ``"exclude"`` (leave them out; NaN
      if none is left) or ``"nan"`` (NaN if any changes, as Quantus with
      ``return_nan_when_prediction_changes=True``).
    clip: optional ``(low, high)`` data range the perturbed input is clipped to.
    batch_size: perturbations explained per call (bounds memory); ``None``: all.

  Returns:
    ``[B]`` sensitivities.

  References:
    Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (In)fidelity and
    Sensitivity of Explanations", NeurIPS 2019. https://arxiv.org/abs/1901.09392
  """
  return _run(explain_fn, x, target, key, num_samples, epsilon, norm, noise, fn, on_flip, clip,
              batch_size, "max")


def avg_sensitivity(explain_fn: ExplainFn, x: Float[Array, "B ..."], target: Target, *,
                    key: PRNGKey, num_samples: int = 50, epsilon: float = 0.02,
                    norm: str = "l2", noise: str = "uniform", fn: Callable | None = None,
                    on_flip: str = "ignore", clip=None,
                    batch_size: int | None = None) -> Float[Array, "B"]:
  """Average sensitivity: the mean relative change of the explanation under noise.

  ``SENS_avg(x) = 1/N sum_s ||Phi(x) - Phi(x + d_s)|| / ||Phi(x)||``, with the
  noise, norms and arguments of `max_sensitivity` (Quantus's AvgSensitivity
  with our defaults). With ``on_flip="exclude"`` the mean runs over the
  samples that keep the prediction. **Lower is better.**

  Returns:
    ``[B]`` sensitivities.

  References:
    Yeh et al., NeurIPS 2019; Bhatt, Weller, Moura, "Evaluating and Aggregating
    Feature-based Model Explanations", IJCAI 2020.
  """
  return _run(explain_fn, x, target, key, num_samples, epsilon, norm, noise, fn, on_flip, clip,
              batch_size, "mean")
