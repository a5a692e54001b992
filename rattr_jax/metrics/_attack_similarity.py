"""Similarity between the maps of clean and attacked inputs: the fragility tables' bridge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax import attacks
from rattr_jax import core
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.core import Explainer
from rattr_jax.metrics import _common as C

ATTACKS = ("random_sign", "topk", "mass_center", "targeted", "manipulation", "frame")


@struct.dataclass
class AttackSimilarity:
  """Result of `attack_similarity`.

  Attributes:
    value: ``[B]`` similarity between the real model's maps of ``x`` and
      ``x_adv``.
    success: ``[B]`` bool, the attack kept the label and improved its
      objective (``AttackResult.success``).
    x_adv: ``[B, *F]`` the attacked inputs.
    result: the full `rattr_jax.attacks.AttackResult`.
  """

  value: jax.Array
  success: jax.Array
  x_adv: jax.Array
  result: Any


def _resolve_attack(attack):
  table = {"random_sign": attacks.random_sign_attack, "topk": attacks.topk_attack,
           "mass_center": attacks.mass_center_attack, "targeted": attacks.targeted_attack,
           "manipulation": attacks.manipulation_attack, "frame": attacks.frame_attack}
  if isinstance(attack, str):
    V.check_choice(attack, ATTACKS, name="attack")
    return table[attack]
  if not callable(attack):
    raise ValueError(f"`attack` must be an attack function of rattr_jax.attacks or one of "
                     f"{list(ATTACKS)}; got {attack!r}.")
  return attack


@jit_with_callables(callables=("explainer", "fn"),
                    static_argnames=("similarity", "reduce", "normalize", "k"))
def _compare(fn, explainer, x, x_adv, t, key, similarity, reduce, normalize, k):
  b = x.shape[0]
  both = explainer(fn, jnp.concatenate([x, x_adv]), jnp.concatenate([t, t]),
                   key=core.call_key(key, 0))
  m = core.normalize_map(C.to_map(both, reduce), normalize)
  return C.similarity_of(similarity, m[:b], m[b:], k)


def attack_similarity(fn: Callable, explainer: Explainer, x: Float[Array, "B ..."],
                      target: Target, *, key: PRNGKey, attack: Callable | str = "topk",
                      similarity: str = "topk", k: int | None = None, reduce: str | None = None,
                      normalize: str | None = None, **attack_kwargs) -> AttackSimilarity:
  """Runs an explanation attack and compares the maps before and after it.

  ``value = sim(M(x), M(x_adv))`` where ``x_adv = attack(fn, explainer, x,
  target, key=key, **attack_kwargs).x_adv`` and ``M`` is the
  map of the real model's explanation, ``explainer(fn, .)``, reduced over
  channels and normalised. This is the quantity of the fragility tables
  (Ghorbani et al.: top-k intersection, Spearman, centre shift; Dombrowski et
  al.: SSIM, Pearson, MSE). **Higher is better** (a robust explanation) for
  ``topk``, ``pearson``, ``spearman``, ``kendall``, ``cosine`` and ``ssim``;
  **lower is better** for ``mse`` and ``center_shift``.

  Two compiled programs run: the attack (one `lax` loop) and the comparison
  (both maps in one explanation call).

  Args:
    fn: the real model ``[B, *F] -> [B, C]``.
    explainer: ``explainer(fn, x, target, *, key)``, e.g.
      `rattr_jax.attribution.gradient` or ``rattr_jax.explainers.get(...)``.
    x: inputs ``[B, *F]`` in the attack's ``input_range``.
    target: class index, an int or an int array ``[B]``.
    key: PRNG key, passed to the attack; the comparison's explainer call gets
      ``rattr_jax.core.call_key(key, 0)``.
    attack: a function of `rattr_jax.attacks` (``topk_attack``, ...) or its
      name: ``random_sign``, ``topk`` (default), ``mass_center``,
      ``targeted``, ``manipulation``, ``frame``.
    similarity: a name of `rattr_jax.metrics.SIMILARITIES`.
    k: the ``k`` of ``topk``; default the attack config's ``k`` (100 for the
      default `AttackConfig`).
    reduce, normalize: map post-processing (`rattr_jax.maps.saliency_map`);
      default the attack config's (``abs_sum``, ``sum_to_one``).
    **attack_kwargs: keyword arguments of the attack (``config``,
      ``surrogate``, ``chunk_size``, ``mask`` of ``targeted``, ``target_map``
      of ``manipulation``, ...).

  Returns:
    `AttackSimilarity` with the ``[B]`` ``value`` and ``success``, ``x_adv``
    and the attack's result.

  References:
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", AAAI
    2019; Dombrowski et al., "Explanations can be manipulated and geometry is
    to blame", NeurIPS 2019.
  """
  AttackConfig = attacks.AttackConfig
  attack_fn = _resolve_attack(attack)
  V.check_key(key)
  x, t, key = C.prepare_model_explainer(fn, explainer, x, target, key, perturbs=True,
                                        what="attack_similarity")
  config = attack_kwargs.get("config")
  if config is None:
    config = AttackConfig()
  reduce = getattr(config, "reduce", "abs_sum") if reduce is None else reduce
  normalize = getattr(config, "normalize", "sum_to_one") if normalize is None else normalize
  V.check_choice(normalize, core.NORMALIZATIONS, name="normalize")
  if similarity == "topk" and k is None:
    k = getattr(config, "k", AttackConfig().k)
  k = C.check_similarity(similarity, k, x, reduce)
  result = attack_fn(fn, explainer, x, target, key=key, **attack_kwargs)
  value = _compare(fn, explainer, x, result.x_adv, t, key, similarity, reduce, normalize, k)
  return AttackSimilarity(value=value, success=result.success, x_adv=result.x_adv,
                          result=result)
