"""Self-explaining neural networks (Alvarez-Melis & Jaakkola, 2018) as Flax NNX modules."""

from rattr_jax.models.senn._aggregators import AGGREGATORS
from rattr_jax.models.senn._aggregators import Aggregator
from rattr_jax.models.senn._conceptizers import CONCEPTIZERS
from rattr_jax.models.senn._conceptizers import ConvConceptizer
from rattr_jax.models.senn._conceptizers import IdentityConceptizer
from rattr_jax.models.senn._model import create_senn
from rattr_jax.models.senn._model import SENN
from rattr_jax.models.senn._model import senn_fn
from rattr_jax.models.senn._model import SENNExplanation
from rattr_jax.models.senn._parametrizers import LeNetParametrizer
from rattr_jax.models.senn._parametrizers import MLPParametrizer
from rattr_jax.models.senn._parametrizers import PARAMETRIZERS
from rattr_jax.models.senn._parametrizers import VGGParametrizer
from rattr_jax.models.senn._engine import register_senn_training
from rattr_jax.models.senn._engine import senn_loss_term
from rattr_jax.models.senn._engine import train_with_engine
from rattr_jax.models.senn._faithfulness import senn_faithfulness
from rattr_jax.models.senn._stability import senn_stability
from rattr_jax.models.senn._train import concept_statistics
from rattr_jax.models.senn._train import fit_senn
from rattr_jax.models.senn._train import SENN_PRESETS
from rattr_jax.models.senn._train import SENNConfig
from rattr_jax.models.senn._train import SENNHistory
from rattr_jax.models.senn._train import senn_preset
from rattr_jax.models.senn._train import train_senn

__all__ = [
    "AGGREGATORS", "Aggregator", "CONCEPTIZERS", "ConvConceptizer", "IdentityConceptizer",
    "create_senn", "SENN", "senn_fn", "SENNExplanation", "LeNetParametrizer",
    "MLPParametrizer", "PARAMETRIZERS", "VGGParametrizer", "register_senn_training",
    "senn_loss_term", "train_with_engine", "senn_faithfulness", "senn_stability",
    "concept_statistics", "fit_senn", "SENN_PRESETS", "SENNConfig", "SENNHistory",
    "senn_preset", "train_senn",
]
