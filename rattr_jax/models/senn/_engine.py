"""SENN on the robust-training engine (`rattr_jax.training`): a loss term and a model builder.

`register_senn_training()` makes ``TrainConfig(model="senn")`` -- and so
``rattr train --model senn`` -- build a SENN for the dataset (autoencoder
concepts + LeNet relevances for 1-channel images, VGG for 3-channel images,
identity concepts + tanh MLP for tabular data) and train it on `senn_loss`
with the engine's optimizer, schedules, checkpoints, resume and NaN stop.
``--lam`` (``config.method.lam``) is the robustness weight ``lambda``. The
``rattr`` command line registers it when it starts.
"""

from __future__ import annotations

from rattr_jax.regularizers import _senn as L

MODEL_NAME = "senn"


def senn_loss_term(*, lambda_robustness: float, lambda_reconstruction: float = 1.0,
                   lambda_sparsity: float = 2e-5, convention: str = "clean",
                   num_projections: int | None = None):
  """The whole SENN objective as one engine `LossTerm` (weight 1).

  Its value is ``CE + lambda_robustness * L_theta + lambda_reconstruction *
  MSE + lambda_sparsity * ||h||_1``; it logs each part as ``senn_ce``,
  ``senn_robustness``, ``senn_reconstruction`` and ``senn_sparsity``. The
  step's key drives parametrizer dropout and the optional residual probes.
  """
  from rattr_jax.training import LossTerm
  L.check_loss_weights(lambda_robustness, lambda_reconstruction, lambda_sparsity, convention)

  def fn(ctx, batch, key):
    total, out = L.senn_loss_impl(ctx.model(True), batch.x, batch.y,
                                  lambda_robustness=lambda_robustness,
                                  lambda_reconstruction=lambda_reconstruction,
                                  lambda_sparsity=lambda_sparsity, convention=convention,
                                  key=key, num_projections=num_projections)
    t = out.terms
    return total, {"senn_ce": t.prediction, "senn_robustness": t.robustness,
                   "senn_reconstruction": t.reconstruction, "senn_sparsity": t.sparsity}

  return LossTerm("senn", fn, 1.0)


def build_for_training(config, dataset):
  """``MODEL_BUILDERS`` entry: ``(SENN, [senn_loss_term])`` for a `TrainConfig`."""
  from rattr_jax.models.senn._model import create_senn
  model = create_senn(input_shape=dataset.input_shape, num_classes=dataset.num_classes,
                      seed=config.seed)
  return model, [senn_loss_term(lambda_robustness=float(config.method.lam))]


def register_senn_training() -> None:
  """Registers ``"senn"`` with `rattr_jax.training.register_model` (idempotent)."""
  from rattr_jax.training import MODEL_BUILDERS, register_model
  if MODEL_BUILDERS.get(MODEL_NAME) is not build_for_training:
    register_model(MODEL_NAME, build_for_training)


def train_with_engine(senn_config, *, out_dir: str | None = None, resume: bool = False,
                      progress: bool = False, dataset=None):
  """Trains a `SENNConfig` with the engine (checkpoints in ``out_dir``, exact resume).

  Returns the engine's `rattr_jax.training.TrainResult`.
  """
  from rattr_jax import training
  from rattr_jax.data import load_dataset
  c = senn_config
  data = dataset if dataset is not None else load_dataset(c.dataset, seed=c.seed)
  model = c.build(data.input_shape, data.num_classes)
  term = senn_loss_term(lambda_robustness=c.lambda_robustness,
                        lambda_reconstruction=c.lambda_reconstruction,
                        lambda_sparsity=c.lambda_sparsity, convention=c.convention,
                        num_projections=c.num_projections)
  cfg = training.TrainConfig(
      model=MODEL_NAME, dataset=c.dataset, epochs=c.epochs, batch_size=c.batch_size,
      seed=c.seed, method=training.MethodConfig(name="ce", lam=float(c.lambda_robustness)),
      optimizer=training.OptimizerConfig(name="adam", learning_rate=c.learning_rate))
  return training.train(cfg, model=model, terms=[term], dataset=data, out_dir=out_dir,
                        resume=resume, progress=progress)
