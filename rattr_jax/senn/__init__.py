"""Self-explaining neural networks (Alvarez-Melis & Jaakkola, NeurIPS 2018) in Flax NNX.

A SENN predicts ``logit_c(x) = sum_i theta_ic(x) h_i(x)``: concepts ``h``
(`IdentityConceptizer` with a constant-1 bias concept for tabular data, the
paper's `ConvConceptizer` autoencoder with ``k`` concepts for images),
relevances ``theta`` (`MLPParametrizer` with tanh, `LeNetParametrizer` and
`VGGParametrizer` with tanh outputs) and an `Aggregator` (sum + softmax, or
sigmoid for binary tasks). ``model(x)`` returns logits, so a SENN is an
ordinary ``fn`` for the rest of rattr_jax; ``model(x,
return_explanation=True)`` also returns `SENNExplanation` ``(theta, h, x_hat)``.

* Losses: `senn_loss` (CE + lambda * robustness +
  reconstruction + sparsity), with the robustness loss computed without the
  concept Jacobian (clean convention by default; the authors' log-softmax /
  unsquared batch-norm convention with ``convention="original"``).
* Training: `SENNConfig`, `SENN_PRESETS` / `senn_preset` (``mnist``,
  ``mnist_fast``, ``breast_cancer``, ``wine``), `train_senn` / `fit_senn` (a
  jitted scan per epoch), or the robust-training engine via
  `train_with_engine`, the training term `SENNObjective` (``"senn"``) and
  ``rattr train --model senn``.
* Evaluation: `senn_stability` (local Lipschitz estimate of theta vs h),
  `senn_faithfulness` (concept removal), `concept_statistics` (reconstruction
  error, concept variance: collapsed concepts have variance ~0), and
  ``rattr senn-report``.

COMPAS, the paper's main tabular benchmark, is **not available offline** and
has no preset here; the UCI sets shipped with scikit-learn (breast_cancer,
wine) stand in for the tabular experiments.
"""

from rattr_jax.senn._aggregators import AGGREGATORS
from rattr_jax.senn._aggregators import Aggregator
from rattr_jax.senn._conceptizers import CONCEPTIZERS
from rattr_jax.senn._conceptizers import ConvConceptizer
from rattr_jax.senn._conceptizers import IdentityConceptizer
from rattr_jax.senn._model import create_senn
from rattr_jax.senn._model import SENN
from rattr_jax.senn._model import senn_fn
from rattr_jax.senn._model import SENNExplanation
from rattr_jax.senn._parametrizers import LeNetParametrizer
from rattr_jax.senn._parametrizers import MLPParametrizer
from rattr_jax.senn._parametrizers import PARAMETRIZERS
from rattr_jax.senn._parametrizers import VGGParametrizer
from rattr_jax.senn._engine import register_senn_training
from rattr_jax.senn._engine import senn_loss_term
from rattr_jax.senn._engine import SENNObjective
from rattr_jax.senn._engine import train_with_engine
from rattr_jax.senn._faithfulness import senn_faithfulness
from rattr_jax.senn._losses import senn_concept_loss
from rattr_jax.senn._losses import senn_loss
from rattr_jax.senn._losses import senn_robustness_loss
from rattr_jax.senn._losses import senn_robustness_residual
from rattr_jax.senn._losses import SENNLossOutput
from rattr_jax.senn._losses import SENNLossTerms
from rattr_jax.senn._stability import senn_stability
from rattr_jax.senn._train import concept_statistics
from rattr_jax.senn._train import fit_senn
from rattr_jax.senn._train import SENN_PRESETS
from rattr_jax.senn._train import SENNConfig
from rattr_jax.senn._train import SENNHistory
from rattr_jax.senn._train import senn_preset
from rattr_jax.senn._train import train_senn

__all__ = [
    "AGGREGATORS", "Aggregator", "CONCEPTIZERS", "ConvConceptizer", "IdentityConceptizer",
    "create_senn", "SENN", "senn_fn", "SENNExplanation", "LeNetParametrizer",
    "MLPParametrizer", "PARAMETRIZERS", "VGGParametrizer", "register_senn_training",
    "senn_loss_term", "SENNObjective", "train_with_engine", "senn_faithfulness", "senn_stability",
    "concept_statistics", "fit_senn", "SENN_PRESETS", "SENNConfig", "SENNHistory",
    "senn_preset", "train_senn", "senn_concept_loss", "senn_loss", "senn_robustness_loss",
    "senn_robustness_residual", "SENNLossOutput", "SENNLossTerms",
]
