"""Similarity between the maps of clean and attacked inputs: the fragility tables' bridge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from rattr_jax import _validation as V
from rattr_jax._jit import jit_with_callables
from rattr_jax._typing import PRNGKey, Target
from rattr_jax.maps import _saliency
from rattr_jax.metrics import _common as C

ATTACKS = ("random_sign", "topk", "mass_center", "targeted", "manipulation", "frame")


class AttackSimilarity(NamedTuple):
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
  from rattr_jax import attacks  # imported lazily: attacks build on metrics
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


@jit_with_callables(callables=("explain", "fn"),
                    static_argnames=("similarity", "reduce", "normalize", "k", "pass_key"))
def _compare(explain, fn, x, x_adv, t, key, similarity, reduce, normalize, k, pass_key):
  from rattr_jax.attacks import _engine
  b = x.shape[0]
  both = _engine.call_explain(explain, fn, jnp.concatenate([x, x_adv]),
                              jnp.concatenate([t, t]), key, pass_key)
  m = _saliency.normalize_map(C.to_map(both, reduce), normalize)
  return C.similarity_of(similarity, m[:b], m[b:], k)


def attack_similarity(attack: Callable | str, fn: Callable, explain: Callable,
                      x: Float[Array, "B ..."], target: Target, *attack_args, key: PRNGKey,
                      similarity: str = "topk", k: int | None = None, reduce: str | None = None,
                      normalize: str | None = None, **attack_kwargs) -> AttackSimilarity:
  """Runs an explanation attack and compares the maps before and after it.

  ``value = sim(M(x), M(x_adv))`` where ``x_adv = attack(fn, explain, x,
  target, *attack_args, key=key, **attack_kwargs).x_adv`` and ``M`` is the
  map of the real model's explanation, ``explain(fn, .)``, reduced over
  channels and normalised. This is the quantity of the fragility tables
  (Ghorbani et al.: top-k intersection, Spearman, centre shift; Dombrowski et
  al.: SSIM, Pearson, MSE). **Higher is better** (a robust explanation) for
  ``topk``, ``pearson``, ``spearman``, ``kendall``, ``cosine`` and ``ssim``;
  **lower is better** for ``mse`` and ``center_shift``.

  Two compiled programs run: the attack (one `lax` loop) and the comparison
  (both maps in one explanation call).

  Args:
    attack: a function of `rattr_jax.attacks` (``topk_attack``, ...) or its
      name: ``random_sign``, ``topk``, ``mass_center``, ``targeted``,
      ``manipulation``, ``frame``.
    fn: the real model ``[B, *F] -> [B, C]``.
    explain: the attacks' explainer ``explain(f, x, target)``, e.g.
      `rattr_jax.attribution.gradient`.
    x: inputs ``[B, *F]`` in the attack's ``input_range``.
    target: class index, an int or an int array ``[B]``.
    *attack_args: extra positional arguments of the attack (``mask`` of
      ``targeted_attack``, ``target_map`` of ``manipulation_attack``).
    key: PRNG key, passed to the attack and to a keyed explainer.
    similarity: a name of `rattr_jax.metrics.SIMILARITIES`.
    k: the ``k`` of ``topk``; default the attack config's ``k`` (100 for the
      default `AttackConfig`).
    reduce, normalize: map post-processing (`rattr_jax.maps.saliency_map`);
      default the attack config's (``abs_sum``, ``sum_to_one``).
    **attack_kwargs: keyword arguments of the attack (``config``,
      ``surrogate``, ``batch_size``, ...).

  Returns:
    `AttackSimilarity` with the ``[B]`` ``value`` and ``success``, ``x_adv``
    and the attack's result.

  References:
    Ghorbani, Abid, Zou, "Interpretation of Neural Networks is Fragile", AAAI
    2019; Dombrowski et al., "Explanations can be manipulated and geometry is
    to blame", NeurIPS 2019.
  """
  from rattr_jax.attacks import AttackConfig
  from rattr_jax.attacks import _engine
  attack_fn = _resolve_attack(attack)
  x, t = C.prepare(x, target, fn)
  V.check_key(key)
  if not callable(explain):
    raise ValueError(f"`explain` must be callable explain(f, x, target); got {explain!r}.")
  config = attack_kwargs.get("config")
  if config is None:
    config = AttackConfig()
  reduce = getattr(config, "reduce", "abs_sum") if reduce is None else reduce
  normalize = getattr(config, "normalize", "sum_to_one") if normalize is None else normalize
  V.check_choice(normalize, _saliency.NORMALIZATIONS, name="normalize")
  if similarity == "topk" and k is None:
    k = getattr(config, "k", AttackConfig().k)
  k = C.check_similarity(similarity, k, x, reduce)
  result = attack_fn(fn, explain, x, target, *attack_args, key=key, **attack_kwargs)
  pass_key = _engine.accepts_key(explain)
  value = _compare(explain, fn, x, result.x_adv, t, key, similarity, reduce, normalize, k,
                   pass_key)
  return AttackSimilarity(value, result.success, result.x_adv, result)
