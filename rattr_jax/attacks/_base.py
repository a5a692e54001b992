"""Attack configurations and the result pytree shared by every attack.

Configs are `flax.struct.dataclass` pytrees. Fields that fix shapes or loop
lengths (``num_steps``, ``k``) and structural choices (map reduction and
normalisation, valid input range) are static (``pytree_node=False``):
changing them recompiles. Continuous hyper-parameters (``epsilon``,
``step_size``, ``learning_rate``, ``gamma``, ``beta_start``, ``beta_end``) are
traced leaves, so a sweep over them reuses one compiled program.

Pixel-scale conventions: rattr_jax images live in [0, 1]. The papers state
their budgets on a [0, 255] scale, so Ghorbani et al.'s ``epsilon = 8`` and
``step size = 0.5`` become ``8/255`` and ``0.5/255`` here. If your inputs use
another scale, set ``input_range`` and rescale ``epsilon``/``step_size`` by
``(hi - lo) / 255``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import jax
from flax import struct

from rattr_jax.core import ThreatModel

#: Which explanation the best iterate is selected on; see `AttackConfig`.
SELECT_ON = ("surrogate", "model", "measure")


@struct.dataclass
class AttackConfig:
  """Settings of the signed-gradient explanation attacks (Ghorbani et al.).

  Attributes:
    epsilon: L-infinity radius around the original input (traced). Default
      ``8/255`` (the paper's 8 on a [0, 255] scale).
    step_size: signed-gradient step ``alpha`` (traced). Default ``0.5/255``.
    num_steps: number of steps ``P`` (static). Default 300.
    k: number of top features for `topk_attack` and for the top-k
      intersection (static). Ghorbani et al. use 1000 on ImageNet and 100 on
      CIFAR-10 (the default here).
    input_range: valid input interval ``(lo, hi)`` that every iterate is
      clipped to, or ``None`` for no clipping (static).
    reduce: channel reduction of the attribution into a map, see
      `rattr_jax.maps.saliency_map` (static). Default ``abs_sum`` (paper).
    normalize: per-example map normalisation (static). ``sum_to_one``
      (default) and Ghorbani's ``sum_to_hw`` differ by a constant factor, so
      signed-gradient attacks behave identically under both.
    select_on: how the best label-preserving iterate is chosen (static).
      ``"surrogate"`` (default) scores each iterate with the objective on the
      surrogate's explanation, which comes for free with its gradient;
      ``"model"`` scores it with the objective on the real model's
      explanation, at the cost of one extra explanation per step;
      ``"measure"`` keeps the iterate with the best value of the *measure the
      attack targets* on the real model's map, as Ghorbani et al.'s code does:
      for `topk_attack` the lowest top-``k`` intersection with the original
      map (not the lowest top-``k`` mass, the surrogate objective); for the
      centre-of-mass and targeted attacks the measure is the objective itself.
      All rules pick among the same iterates (selection does not change the
      steps), so ``"measure"`` is never weaker on the top-k intersection.
      Without a surrogate ``"surrogate"`` and ``"model"`` are the same.
    random_start: start from ``x + epsilon * s`` with random signs ``s``
      (projected; the random-sign baseline) instead of ``x`` (static). Not in
      the paper; on ReLU networks the signed ascent from ``x`` stalls in a
      local optimum, and a random start escapes it. ``x`` is still scored
      first and returned if nothing beats it.
  """

  epsilon: float = 8.0 / 255.0
  step_size: float = 0.5 / 255.0
  num_steps: int = struct.field(pytree_node=False, default=300)
  k: int = struct.field(pytree_node=False, default=100)
  input_range: Optional[Tuple[float, float]] = struct.field(pytree_node=False,
                                                            default=(0.0, 1.0))
  reduce: str = struct.field(pytree_node=False, default="abs_sum")
  normalize: str = struct.field(pytree_node=False, default="sum_to_one")
  select_on: str = struct.field(pytree_node=False, default="surrogate")
  random_start: bool = struct.field(pytree_node=False, default=False)

  @property
  def threat_model(self) -> ThreatModel:
    """The L-infinity `ThreatModel` of radius ``epsilon`` and box ``input_range``."""
    return ThreatModel(epsilon=self.epsilon, norm="linf", input_range=self.input_range)


@struct.dataclass
class ManipulationConfig:
  """Settings of `manipulation_attack` (Dombrowski et al.) and the frame attack.

  The loss, minimised with Adam on the input, is
  ``mean_pixels (h(x_adv) - h_t)^2 + gamma * ||softmax(x_adv) - softmax(x)||^2``
  where ``h`` is the normalised map and ``h_t`` the target map normalised the
  same way.

  Attributes:
    learning_rate: Adam learning rate on the input (traced). Default ``2e-4``
      (the authors' code).
    epsilon: optional L-infinity radius around the original input (traced);
      ``inf`` (default) means no ball, as in the paper.
    gamma: weight of the output-preservation term (traced). The authors'
      prefactors (1e11 on MSE of sum-to-one maps, 1e6 on softmax MSE) depend on
      the image size; with the default ``sum_to_hw`` maps (mean value 1) and a
      summed softmax change, ``gamma = 10`` penalises a 0.1 change of the top
      probability about as much as a mean map error of 0.2.
    beta_start, beta_end: geometric schedule of the surrogate's softplus
      ``beta`` (traced), used only when a ``surrogate_family`` is passed.
      Default 10 -> 100 (the authors' code).
    num_steps: Adam iterations (static). Default 1500.
    input_range: valid input interval (static), or ``None``.
    reduce, normalize: map post-processing (static), see
      `rattr_jax.maps.saliency_map`.
    select_on: ``"surrogate"`` or ``"model"``, as in `AttackConfig`.
  """

  learning_rate: float = 2e-4
  epsilon: float = float("inf")
  gamma: float = 10.0
  beta_start: float = 10.0
  beta_end: float = 100.0
  num_steps: int = struct.field(pytree_node=False, default=1500)
  input_range: Optional[Tuple[float, float]] = struct.field(pytree_node=False,
                                                            default=(0.0, 1.0))
  reduce: str = struct.field(pytree_node=False, default="abs_sum")
  normalize: str = struct.field(pytree_node=False, default="sum_to_hw")
  select_on: str = struct.field(pytree_node=False, default="surrogate")

  @property
  def threat_model(self) -> ThreatModel:
    """The L-infinity `ThreatModel` (``epsilon = inf``: only the box ``input_range``)."""
    return ThreatModel(epsilon=self.epsilon, norm="linf", input_range=self.input_range)


@struct.dataclass
class AttackResult:
  """What every attack returns (a pytree; nothing raises inside jit).

  The objective is always oriented so that **higher is better for the
  attacker** (`manipulation_attack` reports minus its loss).

  Attributes:
    x_adv: ``[B, *F]`` best label-preserving iterate; ``x`` itself for an
      example where no iterate both kept the label and improved the objective.
    success: ``[B]`` bool, the label was kept and the objective improved.
    objective: ``[B]`` objective of ``x_adv`` (the best seen among
      label-preserving iterates).
    initial_objective: ``[B]`` objective at ``x``.
    objective_history: ``[B, num_steps]`` objective after each step
      (including label-flipped iterates). With ``random_start`` it is
      ``[B, num_steps + 1]`` and column 0 is the random starting point, which
      is a candidate like every step.
    label_kept_history: bool, same shape as ``objective_history``: the real
      model kept the label at that iterate.
    best_step: ``[B]`` int, index of the returned iterate: 0 = the starting
      point (``x``, or the random start), ``p`` = after step ``p``; with
      ``random_start``, -1 = ``x`` itself (no iterate improved on it).
    label: ``[B]`` the real model's predicted label at ``x`` (kept by
      ``x_adv``).
    surrogate_agreement: ``[B]`` bool, the surrogate predicts the same label
      as the real model at ``x``. A low rate flags a poor surrogate.
    num_steps: number of steps taken (scalar int).
  """

  x_adv: jax.Array
  success: jax.Array
  objective: jax.Array
  initial_objective: jax.Array
  objective_history: jax.Array
  label_kept_history: jax.Array
  best_step: jax.Array
  label: jax.Array
  surrogate_agreement: jax.Array
  num_steps: jax.Array
