"""Random-perturbation similarity (RPS) of the gradient-alignment paper."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import ExplainFn, PRNGKey, Target
from rattr_jax.metrics import _common as C


@jit_with_callables(callables=("explain_fn",),
                    static_argnames=("num_samples", "similarity", "reduce", "k", "noise", "clip",
                                     "batch_size"))
def _rps(explain_fn, x, t, key, epsilon, num_samples, similarity, reduce, k, noise, clip,
         batch_size):
  bsz, feat = x.shape[0], x.shape[1:]
  keys = C.example_keys(key, bsz)
  m0 = C.to_map(explain_fn(x, t), reduce)

  def chunk(idx):
    xs = x[None] + C.sample_noise(keys, idx, feat, x.dtype, epsilon, noise)
    if clip is not None:
      xs = jnp.clip(xs, clip[0], clip[1])
    s = xs.shape[0]
    ms = C.to_map(C.explain_many(explain_fn, xs, t).reshape((s * bsz,) + feat), reduce)
    ref = jnp.broadcast_to(m0[None], (s,) + m0.shape).reshape(ms.shape)
    return C.similarity_of(similarity, ref, ms, k).reshape(s, bsz)

  vals = C.map_chunks(chunk, num_samples, batch_size)
  return jnp.mean(vals, axis=0)


def random_perturbation_similarity(explain_fn: ExplainFn, x: Float[Array, "B ..."],
                                   target: Target, *, key: PRNGKey, num_samples: int = 10,
                                   epsilon: float = 8.0 / 255.0, similarity: str = "pearson",
                                   reduce: str = "abs_sum", k: int | None = None,
                                   noise: str = "uniform", clip=None,
                                   batch_size: int | None = None) -> Float[Array, "B"]:
  """Mean similarity between the map of ``x`` and the maps of randomly perturbed ``x``.

  ``RPS(x) = 1/N sum_s sim(M(x), M(clip(x + d_s)))`` with ``d_s ~ U(-epsilon,
  epsilon)`` per feature and ``M`` the saliency map (``reduce`` over the
  channels of an NHWC attribution). The gradient-alignment paper uses 10
  samples at ``epsilon`` in {4, 8, 16}/255 with the noisy input clamped to the
  data range (pass ``clip=(0., 1.)`` for [0, 1] images) and reports Pearson,
  cosine, SSIM and MSE. **Higher is better** for ``pearson``, ``spearman``,
  ``kendall``, ``cosine``, ``ssim`` and ``topk``; **lower is better** for
  ``mse`` and ``center_shift``.

  Args:
    explain_fn: ``explain(x, target) -> attribution`` shaped like ``x``, treating
      examples independently.
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
    clip: optional ``(low, high)`` data range for the perturbed input.
    batch_size: perturbations per call of ``explain_fn``; ``None``: all.

  Returns:
    ``[B]`` mean similarities.

  References:
    Joo, Jeong, Heo, Weller, Moon, "Towards More Robust Interpretation via
    Local Gradient Alignment", AAAI 2023. https://arxiv.org/abs/2211.15900
  """
  x, t = C.prepare(x, target)
  C.check_explain(explain_fn, x, t)
  key = C.check_metric_key(key, x.shape[0])
  num_samples = V.check_positive_int(num_samples, name="num_samples")
  V.check_positive(epsilon, name="epsilon")
  k = C.check_similarity(similarity, k, x, reduce)
  V.check_choice(noise, C.NOISES, name="noise")
  clip = C.check_clip(clip)
  batch_size = V.check_optional_positive_int(batch_size, name="batch_size")
  return _rps(explain_fn, x, t, key, jnp.asarray(epsilon, x.dtype), num_samples, similarity,
              reduce, k, noise, clip, batch_size)
