"""Explanation attacks: perturb ``x`` so the label stays and the explanation moves.

Every attack: ``attack(fn, explainer, x, target, *, key, config=None, surrogate=None,
chunk_size=None, ...) -> AttackResult``, where ``explainer(f, x, target, *, key)``
is any explainer (`rattr_jax.explainers`; it is called on the surrogate for
gradients and on ``fn`` for reference maps). Everything after ``target`` is
keyword-only. See `rattr_jax.attacks._ghorbani` for details.
"""

from rattr_jax.attacks._base import AttackConfig
from rattr_jax.attacks._base import AttackResult
from rattr_jax.attacks._base import ManipulationConfig
from rattr_jax.attacks._base import SELECT_ON
from rattr_jax.attacks._constraints import check_positive_scalar
from rattr_jax.attacks._engine import run_loop as attack_loop
from rattr_jax.attacks._dombrowski import beta_schedule
from rattr_jax.attacks._dombrowski import manipulation_attack
from rattr_jax.attacks._dombrowski import softplus_family
from rattr_jax.attacks._frame import frame_attack
from rattr_jax.attacks._frame import frame_config
from rattr_jax.attacks._frame import frame_map
from rattr_jax.attacks._ghorbani import mass_center_attack
from rattr_jax.attacks._ghorbani import random_sign_attack
from rattr_jax.attacks._ghorbani import targeted_attack
from rattr_jax.attacks._ghorbani import topk_attack

__all__ = [
    "AttackConfig",
    "AttackResult",
    "ManipulationConfig",
    "SELECT_ON",
    "attack_loop",
    "check_positive_scalar",
    "beta_schedule",
    "manipulation_attack",
    "softplus_family",
    "frame_attack",
    "frame_config",
    "frame_map",
    "mass_center_attack",
    "random_sign_attack",
    "targeted_attack",
    "topk_attack",
]
