"""Explanation attacks: perturb ``x`` so the label stays and the explanation moves.

Every attack: ``attack(fn, explain, x, target, config, *, key, surrogate=None,
batch_size=None) -> AttackResult``, where ``explain(f, x, target)`` is any
rattr_jax attribution method (it is called on the surrogate for gradients and
on ``fn`` for reference maps). See `rattr_jax.attacks._ghorbani` for details.
"""

from rattr_jax.attacks._base import AttackConfig
from rattr_jax.attacks._base import AttackResult
from rattr_jax.attacks._base import ManipulationConfig
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
