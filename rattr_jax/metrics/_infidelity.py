"""Infidelity of an explanation (Yeh et al., 2019), with Captum's conventions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax import core
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax.metrics import _common as C


@jit_with_callables(callables=("fn", "explainer"),
                    static_argnames=("num_samples", "noise", "output", "chunk_size"))
def _infidelity(fn, explainer, x, t, key, epsilon, baseline, num_samples, noise, normalize,
                multiply_by_inputs, output, chunk_size):
  bsz, feat = x.shape[0], x.shape[1:]
  keys = C.example_keys(key, bsz)
  attr = explainer(fn, x, t, key=core.call_key(key, 0))
  f0 = C.target_output(fn(x), t, output)
  scale = x - baseline
  scale = jnp.where(scale == 0, jnp.ones_like(scale), scale)  # Captum's safe_div, default 1

  def chunk(idx):
    pert = C.sample_noise(keys, idx, feat, x.dtype, epsilon, noise)   # I, [c, B, *F]
    xs = x[None] - pert
    f = C.target_output(C.logits_many(fn, xs), t[None], output)      # [c, B]
    pert = jnp.where(multiply_by_inputs, pert / scale[None], pert)  # traced flag
    a = jnp.sum((pert * attr[None]).reshape(pert.shape[:2] + (-1,)), axis=-1)
    return a, f0[None] - f

  a, d = C.map_chunks(chunk, num_samples, chunk_size)                # [S, B] each
  saa, sad = jnp.sum(a * a, 0), jnp.sum(a * d, 0)
  beta = sad / jnp.where(saa == 0, jnp.ones_like(saa), saa)
  beta = jnp.where(normalize, beta, jnp.ones_like(beta))  # traced: one program for both
  # Captum expands the square into sums; the direct form avoids cancellation.
  return jnp.mean((beta[None] * a - d) ** 2, axis=0)


def infidelity(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."], target: Target,
               *, key: PRNGKey, num_samples: int = 10, epsilon: float = 0.1,
               noise: str = "gaussian", normalize: bool = False,
               multiply_by_inputs: bool = False, baseline: Any = None,
               output: str = "logit", chunk_size: int | None = None) -> Float[Array, "B"]:
  """Infidelity: how badly ``I . Phi`` predicts the output change ``f(x) - f(x - I)``.

  ``INFD(x) = 1/N sum_s (I_s . Phi(x) - (f(x) - f(x - I_s)))^2`` with random
  perturbations ``I_s ~ N(0, epsilon^2)`` per feature (``noise="uniform"``:
  ``U(-epsilon, epsilon)``) and ``f`` the target logit (``output=
  "probability"``: its softmax probability). **Lower is better** (0: the
  explanation predicts every output change).

  As in Captum's ``infidelity``:

  * ``normalize=True`` rescales the explanation optimally first,
    ``beta = sum_s a_s d_s / sum_s a_s^2`` (a zero denominator counts as 1),
    giving ``1/N sum_s (beta a_s - d_s)^2``;
  * ``multiply_by_inputs=True`` (Captum's ``infidelity_perturb_func_decorator
    (True)``) is for attributions that already multiply by ``x - baseline``
    (input x gradient, integrated gradients): the dot product then uses
    ``I / (x - baseline)`` (a zero denominator counts as 1). This is the
    "matching perturbation" under which a linear model's input x gradient has
    infidelity 0; with ``multiply_by_inputs=False`` its plain gradient does.

  Captum has no default perturbation (its documentation example is Gaussian
  noise of standard deviation 0.003) and 10 samples; Quantus's Infidelity
  replaces square patches by a baseline. We default to Gaussian noise with
  ``epsilon = 0.1`` and 10 samples.

  Args:
    fn: model ``[B, *F] -> [B, C]``.
    explainer: ``explainer(fn, x, target, *, key)`` (explained at ``x`` only),
      or ``rattr_jax.explainers.precomputed(maps)`` for saved attributions.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: one PRNG key or ``B`` keys (one per example).
    num_samples: number of perturbations ``N``.
    epsilon: noise standard deviation (``gaussian``) or radius (``uniform``).
    noise: ``"gaussian"`` or ``"uniform"``.
    normalize: optimal rescaling of the explanation.
    multiply_by_inputs: see above.
    baseline: the ``x - baseline`` scale of ``multiply_by_inputs`` (default 0).
    output: ``"logit"`` or ``"probability"``.
    chunk_size: perturbations per call of ``fn``; ``None``: all at once.

  Returns:
    ``[B]`` infidelities.

  References:
    Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (In)fidelity and
    Sensitivity of Explanations", NeurIPS 2019. https://arxiv.org/abs/1901.09392
  """
  V.check_key(key)
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=False,
                                        what="infidelity")
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  V.check_positive(epsilon, name="epsilon")
  V.check_choice(noise, C.NOISES, name="noise")
  V.check_choice(output, C.OUTPUTS, name="output")
  b = V.check_baseline(baseline, x)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  return _infidelity(fn, explainer, x, t, key, jnp.asarray(epsilon, x.dtype), b, num_samples,
                     noise, jnp.asarray(bool(normalize)), jnp.asarray(bool(multiply_by_inputs)),
                     output, chunk_size)
