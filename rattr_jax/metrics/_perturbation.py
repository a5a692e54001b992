"""Random-perturbation similarity (RPS) of the gradient-alignment paper."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax import core
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax.metrics import _common as C


@jit_with_callables(callables=("fn", "explainer"),
                    static_argnames=("num_samples", "similarity", "reduce", "k", "noise",
                                     "input_range", "chunk_size"))
def _rps(fn, explainer, x, t, key, epsilon, num_samples, similarity, reduce, k, noise,
         input_range, chunk_size):
  bsz, feat = x.shape[0], x.shape[1:]
  keys = C.example_keys(key, bsz)
  m0 = C.to_map(explainer(fn, x, t, key=core.call_key(key, 0)), reduce)

  def chunk(idx):
    xs = C.clip_to(x[None] + C.sample_noise(keys, idx, feat, x.dtype, epsilon, noise),
                   input_range)
    s = xs.shape[0]
    es = C.explain_many(explainer, fn, xs, t, core.call_key(key, 1 + idx[0]))
    ms = C.to_map(es.reshape((s * bsz,) + feat), reduce)
    ref = jnp.broadcast_to(m0[None], (s,) + m0.shape).reshape(ms.shape)
    return C.similarity_of(similarity, ref, ms, k).reshape(s, bsz)

  vals = C.map_chunks(chunk, num_samples, chunk_size)
  return jnp.mean(vals, axis=0)


def random_perturbation_similarity(fn: Callable, explainer: Explainer,
                                   x: Float[Array, "B ..."], target: Target, *, key: PRNGKey,
                                   num_samples: int = 10, epsilon: float = 8.0 / 255.0,
                                   similarity: str = "pearson", reduce: str = "abs_sum",
                                   k: int | None = None, noise: str = "uniform",
                                   input_range=None,
                                   chunk_size: int | None = None) -> Float[Array, "B"]:
  """Mean similarity between the map of ``x`` and the maps of randomly perturbed ``x``.

  ``RPS(x) = 1/N sum_s sim(M(x), M(clip(x + d_s)))`` with ``d_s ~ U(-epsilon,
  epsilon)`` per feature and ``M`` the saliency map (``reduce`` over the
  channels of an NHWC attribution). The gradient-alignment paper uses 10
  samples at ``epsilon`` in {4, 8, 16}/255 with the noisy input clamped to the
  data range (pass ``input_range=(0., 1.)`` for [0, 1] images) and reports Pearson,
  cosine, SSIM and MSE. **Higher is better** for ``pearson``, ``spearman``,
  ``kendall``, ``cosine``, ``ssim`` and ``topk``; **lower is better** for
  ``mse`` and ``center_shift``.

  Args:
    fn: the model ``[B, *F] -> [B, C]`` (explained).
    explainer: ``explainer(fn, x, target, *, key) -> attribution`` shaped like
      ``x``, treating examples independently.
    x: inputs ``[B, *F]``.
    target: class index, an int or an int array ``[B]``.
    key: one PRNG key or ``B`` keys (one per example).
    num_samples: number of perturbations ``N``.
    epsilon: noise radius (standard deviation for ``noise="gaussian"``).
    similarity: one of ``pearson``, ``spearman``, ``kendall``, ``cosine``,
      ``ssim``, ``mse``, ``topk`` (needs ``k``), ``center_shift`` (the
      functions of `rattr_jax.metrics`).
    reduce: channel reduction of NHWC attributions into ``[B, H, W]`` maps
      (``abs_sum``, ``sum``, ``max_abs`` or ``none``); other ranks are
      compared element-wise (``abs`` for ``abs_sum``/``max_abs``).
    k: the ``k`` of ``topk``.
    noise: ``"uniform"`` or ``"gaussian"``.
    input_range: optional valid box ``(lo, hi)`` for the perturbed input.
    chunk_size: perturbations per explainer call; ``None``: all.

  Returns:
    ``[B]`` mean similarities.

  References:
    Joo, Jeong, Heo, Weller, Moon, "Towards More Robust Interpretation via
    Local Gradient Alignment", AAAI 2023. https://arxiv.org/abs/2211.15900
  """
  V.check_key(key)
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=True,
                                        what="random_perturbation_similarity")
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  V.check_positive(epsilon, name="epsilon")
  k = C.check_similarity(similarity, k, x, reduce)
  V.check_choice(noise, C.NOISES, name="noise")
  input_range = C.check_range(input_range)
  chunk_size = V.check_optional_positive_int(chunk_size, name="chunk_size")
  return _rps(fn, explainer, x, t, key, jnp.asarray(epsilon, x.dtype), num_samples, similarity,
              reduce, k, noise, input_range, chunk_size)
