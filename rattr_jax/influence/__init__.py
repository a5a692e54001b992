"""Influence functions on the last layer (exact damped Hessian) and the influence attack."""

from rattr_jax.influence._attack import influence_attack
from rattr_jax.influence._attack import influence_attack_config
from rattr_jax.influence._attack import InfluenceAttackResult
from rattr_jax.influence._influence import fit_influence
from rattr_jax.influence._influence import influence
from rattr_jax.influence._influence import InfluenceState
from rattr_jax.influence._influence import top_influential
from rattr_jax.influence._last_layer import last_layer
from rattr_jax.influence._last_layer import LastLayer

__all__ = [
    "influence_attack",
    "influence_attack_config",
    "InfluenceAttackResult",
    "fit_influence",
    "influence",
    "InfluenceState",
    "top_influential",
    "last_layer",
    "LastLayer",
]
