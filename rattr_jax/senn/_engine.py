"""SENN on the robust-training engine (`rattr_jax.training`): a loss term and a model builder.

`register_senn_training()` makes ``TrainConfig(model="senn")`` -- and so
``rattr train --model senn`` -- build a SENN for the dataset (autoencoder
concepts + LeNet relevances for 1-channel images, VGG for 3-channel images,
identity concepts + tanh MLP for tabular data) and train it on `senn_loss`
with the engine's optimizer, schedules, checkpoints, resume and NaN stop.
The objective is the registered training term ``"senn"`` (`SENNObjective`);
``--lam`` is its robustness weight ``lambda``. The ``rattr`` command line
registers both when it starts.
"""

from __future__ import annotations

from rattr_jax import training
from rattr_jax.senn import _losses as L

MODEL_NAME = "senn"


@training.register_term
class SENNObjective(training.Term):
  """The whole SENN objective as one training term (weight 1).

  Its value is ``CE + lambda_robustness * L_theta + lambda_reconstruction *
  MSE + lambda_sparsity * ||h||_1`` (`rattr_jax.senn.senn_loss`); it
  logs each part as ``senn_ce``, ``senn_robustness``,
  ``senn_reconstruction`` and ``senn_sparsity``. The step's key drives
  parametrizer dropout and the optional residual probes. ``lam`` is accepted
  for ``lambda_robustness`` by `rattr_jax.training.with_params` (``--lam``).
  """

  name = "senn"
  choices = {"convention": L.CONVENTIONS}
  aliases = {"lam": "lambda_robustness"}

  lambda_robustness: float = 1e-2
  lambda_reconstruction: float = 1.0
  lambda_sparsity: float = 2e-5
  convention: str = "clean"
  num_projections: int | None = None

  def prepare(self, setup):
    from rattr_jax.senn._model import SENN
    if not isinstance(setup.model, SENN):
      raise ValueError(f"The `senn` term needs a SENN model; got {type(setup.model).__name__}.")
    return self

  def loss(self, ctx, batch, key):
    total, out = L.senn_loss_impl(ctx.model(True), batch.x, batch.y,
                                  lambda_robustness=self.lambda_robustness,
                                  lambda_reconstruction=self.lambda_reconstruction,
                                  lambda_sparsity=self.lambda_sparsity,
                                  convention=self.convention, key=key,
                                  num_projections=self.num_projections)
    t = out.terms
    return total, {"senn_ce": t.prediction, "senn_robustness": t.robustness,
                   "senn_reconstruction": t.reconstruction, "senn_sparsity": t.sparsity}


def senn_loss_term(*, lambda_robustness: float, lambda_reconstruction: float = 1.0,
                   lambda_sparsity: float = 2e-5, convention: str = "clean",
                   num_projections: int | None = None) -> training.LossTerm:
  """The engine `LossTerm` of `SENNObjective` with these settings."""
  return SENNObjective(lambda_robustness=lambda_robustness,
                       lambda_reconstruction=lambda_reconstruction,
                       lambda_sparsity=lambda_sparsity, convention=convention,
                       num_projections=num_projections).loss_term()


def build_for_training(config, dataset):
  """``MODEL_BUILDERS`` entry: the SENN of a `TrainConfig` (its objective comes from
  ``config.terms``, e.g. ``(SENNObjective(...),)``)."""
  from rattr_jax.senn._model import create_senn
  return create_senn(input_shape=dataset.input_shape, num_classes=dataset.num_classes,
                     seed=config.seed)


def register_senn_training() -> None:
  """Registers the ``"senn"`` model builder and training term (idempotent)."""
  training.register_term(SENNObjective)
  if training.MODEL_BUILDERS.get(MODEL_NAME) is not build_for_training:
    training.register_model(MODEL_NAME, build_for_training)


def train_with_engine(senn_config, *, out_dir: str | None = None, resume: bool = False,
                      progress: bool = False, dataset=None):
  """Trains a `SENNConfig` with the engine (checkpoints in ``out_dir``, exact resume).

  Returns the engine's `rattr_jax.training.TrainResult`.
  """
  from rattr_jax.data import load_dataset
  c = senn_config
  register_senn_training()
  data = dataset if dataset is not None else load_dataset(c.dataset, seed=c.seed)
  model = c.build(data.input_shape, data.num_classes)
  term = c.objective()
  cfg = training.TrainConfig(
      model=MODEL_NAME, dataset=c.dataset, epochs=c.epochs, batch_size=c.batch_size,
      seed=c.seed, terms=(term,),
      optimizer=training.OptimizerConfig(name="adam", learning_rate=c.learning_rate))
  return training.train(cfg, model=model, dataset=data, out_dir=out_dir, resume=resume,
                        progress=progress)
