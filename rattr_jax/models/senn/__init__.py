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

__all__ = [
    "AGGREGATORS", "Aggregator", "CONCEPTIZERS", "ConvConceptizer", "IdentityConceptizer",
    "create_senn", "SENN", "senn_fn", "SENNExplanation", "LeNetParametrizer",
    "MLPParametrizer", "PARAMETRIZERS", "VGGParametrizer",
]
