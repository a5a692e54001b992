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
numerator norm         Frobenius (= L2 of the  Frobenius (= L2 of     ``change_norm="l2"``
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
from rattr_jax import core
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax.metrics import _common as C


@jit_with_callables(callables=("explainer", "fn"),
                    static_argnames=("num_samples", "change_norm", "noise", "on_flip",
                                     "input_range", "chunk_size"))
def _sensitivity(fn, explainer, x, t, key, epsilon, num_samples, change_norm, noise, on_flip,
                 input_range, chunk_size):
  """``[2, B]``: max- and average-sensitivity (one program serves both metrics)."""
  bsz, feat = x.shape[0], x.shape[1:]
  keys = C.example_keys(key, bsz)
  phi = explainer(fn, x, t, key=core.call_key(key, 0))
  den = C.flat_norm(phi, change_norm)
  den = jnp.where(den == 0, jnp.ones_like(den), den)
  pred = None if on_flip == "ignore" else jnp.argmax(fn(x), axis=-1)

  def chunk(idx):
    xs = C.clip_to(x[None] + C.sample_noise(keys, idx, feat, x.dtype, epsilon, noise),
                   input_range)
    phis = C.explain_many(explainer, fn, xs, t, core.call_key(key, 1 + idx[0]))
    val = C.flat_norm(phis - phi[None], change_norm, batch_dims=2) / den[None]
    valid = (jnp.ones(val.shape, bool) if pred is None
             else C.predict_many(fn, xs) == pred[None])
    return val, valid

  vals, valid = C.map_chunks(chunk, num_samples, chunk_size)
  return jnp.stack([C.reduce_samples(vals, valid, on_flip, "max"),
                    C.reduce_samples(vals, valid, on_flip, "mean")])


def _run(fn, explainer, x, target, key, num_samples, epsilon, change_norm, noise, on_flip,
         input_range, chunk_size, how):
  V.check_key(key)
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=True,
                                        what=f"{how}_sensitivity")
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  V.check_positive(epsilon, name="epsilon")
  V.check_choice(change_norm, C.CHANGE_NORMS, name="change_norm")
  V.check_choice(noise, C.NOISES, name="noise")
  C.check_flip(on_flip)
  input_range = C.check_range(input_range)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  both = _sensitivity(fn, explainer, x, t, key, jnp.asarray(epsilon, x.dtype), num_samples,
                      change_norm, noise, on_flip, input_range, chunk_size)
  return both[0] if how == "max" else both[1]


def max_sensitivity(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                    target: Target, *, key: PRNGKey, num_samples: int = 50,
                    epsilon: float = 0.02, change_norm: str = "l2", noise: str = "uniform",
                    on_flip: str = "ignore", input_range=None,
                    chunk_size: int | None = None) -> Float[Array, "B"]:
  """Max-sensitivity: the largest relative change of the explanation under noise.

  ``SENS_max(x) = max_{s=1..N} ||Phi(x) - Phi(x + d_s)|| / ||Phi(x)||`` with
  ``d_s ~ U(-epsilon, epsilon)`` per feature (``noise="gaussian"``:
  ``N(0, epsilon^2)``). A zero ``||Phi(x)||`` is replaced by 1 (Captum). See the
  module docstring for how Captum's and Quantus's defaults differ from ours.
  **Lower is better** (0 = the explanation does not move).

  All ``N`` perturbations are explained inside one compiled program,
  ``chunk_size`` samples (``chunk_size * B`` inputs) per call of the
  explainer.

  Args:
    fn: the model ``[B, *F] -> [B, C]`` (explained, and detects prediction
      changes for ``on_flip``).
    explainer: ``explainer(fn, x, target, *, key) -> attribution`` shaped like
      ``x`` (`rattr_jax.explainers`); it must treat examples independently (it
      is called on ``chunk_size * B`` inputs) and gets the key
      ``rattr_jax.core.call_key(key, i)`` at call ``i``.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: one PRNG key, or ``B`` keys (one per example). Sample ``s`` of example
      ``b`` uses ``fold_in(keys[b], s)``, so results do not depend on the batch
      or on ``chunk_size``.
    num_samples: number of perturbations ``N``.
    epsilon: perturbation radius (uniform) or standard deviation (gaussian).
    change_norm: ``"l2"`` (Frobenius of the flattened map), ``"l1"`` or ``"linf"``.
    noise: ``"uniform"`` or ``"gaussian"``.
    on_flip: what to do with perturbations that change ``argmax fn``:
      ``"ignore"`` (count them, as Captum), ``"exclude"`` (leave them out; NaN
      if none is left) or ``"nan"`` (NaN if any changes, as Quantus with
      ``return_nan_when_prediction_changes=True``).
    input_range: optional valid box ``(lo, hi)`` the perturbed input is
      clipped to.
    chunk_size: perturbations explained per call (bounds memory); ``None``: all.

  Returns:
    ``[B]`` sensitivities.

  References:
    Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (In)fidelity and
    Sensitivity of Explanations", NeurIPS 2019. https://arxiv.org/abs/1901.09392
  """
  return _run(fn, explainer, x, target, key, num_samples, epsilon, change_norm, noise, on_flip,
              input_range, chunk_size, "max")


def avg_sensitivity(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                    target: Target, *, key: PRNGKey, num_samples: int = 50,
                    epsilon: float = 0.02, change_norm: str = "l2", noise: str = "uniform",
                    on_flip: str = "ignore", input_range=None,
                    chunk_size: int | None = None) -> Float[Array, "B"]:
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
  return _run(fn, explainer, x, target, key, num_samples, epsilon, change_norm, noise, on_flip,
              input_range, chunk_size, "mean")
