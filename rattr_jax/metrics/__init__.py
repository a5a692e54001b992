"""Metrics on explanations. Every metric returns one value per example ``[B]``."""

from rattr_jax.metrics._attack_similarity import attack_similarity
from rattr_jax.metrics._attack_similarity import AttackSimilarity
from rattr_jax.metrics._faithfulness import adversarial_insertion
from rattr_jax.metrics._faithfulness import CurveResult
from rattr_jax.metrics._faithfulness import deletion
from rattr_jax.metrics._faithfulness import faithfulness_estimate
from rattr_jax.metrics._faithfulness import insertion
from rattr_jax.metrics._fidelity import saliency_fidelity
from rattr_jax.metrics._infidelity import infidelity
from rattr_jax.metrics._lipschitz import local_lipschitz_estimate
from rattr_jax.metrics._lipschitz import senn_local_lipschitz_estimate
from rattr_jax.metrics._perturbation import random_perturbation_similarity
from rattr_jax.metrics._relative_stability import relative_input_stability
from rattr_jax.metrics._relative_stability import relative_output_stability
from rattr_jax.metrics._relative_stability import relative_representation_stability
from rattr_jax.metrics._robustness import avg_sensitivity
from rattr_jax.metrics._robustness import max_sensitivity
from rattr_jax.metrics._common import SIMILARITIES
from rattr_jax.metrics._similarity import average_ranks
from rattr_jax.metrics._similarity import center_of_mass
from rattr_jax.metrics._similarity import center_shift
from rattr_jax.metrics._similarity import cosine_similarity
from rattr_jax.metrics._similarity import kendall_tau
from rattr_jax.metrics._similarity import mse
from rattr_jax.metrics._similarity import pearson
from rattr_jax.metrics._similarity import spearman
from rattr_jax.metrics._similarity import ssim
from rattr_jax.metrics._similarity import topk_intersection

__all__ = [
    "attack_similarity",
    "AttackSimilarity",
    "adversarial_insertion",
    "CurveResult",
    "deletion",
    "faithfulness_estimate",
    "insertion",
    "saliency_fidelity",
    "infidelity",
    "local_lipschitz_estimate",
    "senn_local_lipschitz_estimate",
    "random_perturbation_similarity",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "avg_sensitivity",
    "max_sensitivity",
    "SIMILARITIES",
    "average_ranks",
    "center_of_mass",
    "center_shift",
    "cosine_similarity",
    "kendall_tau",
    "mse",
    "pearson",
    "spearman",
    "ssim",
    "topk_intersection",
]
