"""SENN training presets and `fit_senn` (the training engine on the SENN objective).

The presets follow the paper and its reproductions (notes section 1.3 and fact
4): MNIST with the convolutional autoencoder (k = 5), the LeNet parametrizer,
Adam 2e-4, batch 200; the UCI/sklearn tabular sets with identity concepts and
a tanh MLP. COMPAS is *not* available offline (the original data is a
ProPublica CSV whose SENN labels are the binarised COMPAS ``score_factor``, not
recidivism), so there is no COMPAS preset.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rattr_jax import _validation as V
from rattr_jax.senn._model import SENN, create_senn
from rattr_jax.senn import _losses as L


@dataclasses.dataclass(frozen=True)
class SENNConfig:
  """Everything that defines a SENN training run.

  Attributes:
    dataset: a `rattr_jax.data.load_dataset` name.
    conceptizer, parametrizer, aggregator, num_concepts, hidden, dropout:
      passed to `create_senn` (``None``: its defaults for the input shape).
    lambda_robustness: ``lambda``, the robustness-loss weight (>= 0).
    lambda_reconstruction: reconstruction-MSE weight (>= 0).
    lambda_sparsity: L1 concept-sparsity strength (>= 0).
    convention: robustness-loss convention, ``"clean"`` or ``"original"``.
    num_projections: ``None``: exact robustness residual (``T`` backward
      passes per step); an int ``P``: ``P`` Gaussian probes (unbiased for the
      squared norm, about ``T / P`` times cheaper).
    learning_rate: Adam learning rate.
    batch_size: minibatch size (the remainder of each epoch is dropped).
    epochs: passes over the training data.
    seed: initialisation, shuffling and dropout seed.
    conv_impl: convolution autodiff implementation of the model.
  """

  dataset: str = "mnist_embedded"
  conceptizer: str | None = None
  parametrizer: str | None = None
  aggregator: str = "softmax"
  num_concepts: int | None = None
  hidden: tuple[int, ...] | None = None
  dropout: float = 0.0
  lambda_robustness: float = 1e-2
  lambda_reconstruction: float = 1.0
  lambda_sparsity: float = 2e-5
  convention: str = "clean"
  num_projections: int | None = None
  learning_rate: float = 2e-4
  batch_size: int = 200
  epochs: int = 10
  seed: int = 0
  conv_impl: str = "auto"

  def __post_init__(self):
    if self.num_concepts is not None:
      V.check_positive_int(self.num_concepts, name="num_concepts")
    if self.num_projections is not None:
      V.check_positive_int(self.num_projections, name="num_projections")
    V.check_positive_int(self.batch_size, name="batch_size")
    V.check_positive_int(self.epochs, name="epochs")
    V.check_positive(self.learning_rate, name="learning_rate")
    L.check_loss_weights(self.lambda_robustness, self.lambda_reconstruction,
                         self.lambda_sparsity, self.convention)
    from rattr_jax.senn._aggregators import AGGREGATORS
    from rattr_jax.senn._conceptizers import CONCEPTIZERS
    from rattr_jax.senn._parametrizers import PARAMETRIZERS
    if self.conceptizer is not None:
      V.check_choice(self.conceptizer, CONCEPTIZERS, name="conceptizer")
    if self.parametrizer is not None:
      V.check_choice(self.parametrizer, PARAMETRIZERS, name="parametrizer")
    V.check_choice(self.aggregator, AGGREGATORS, name="aggregator")
    if not 0.0 <= float(self.dropout) < 1.0:
      raise ValueError(f"`dropout` must lie in [0, 1); got {self.dropout}.")

  def replace(self, **changes) -> "SENNConfig":
    return dataclasses.replace(self, **changes)

  def build(self, input_shape: Sequence[int], num_classes: int) -> SENN:
    """The untrained SENN this config describes."""
    return create_senn(input_shape=input_shape, num_classes=num_classes,
                       conceptizer=self.conceptizer, parametrizer=self.parametrizer,
                       num_concepts=self.num_concepts, aggregator=self.aggregator,
                       hidden=self.hidden, dropout=self.dropout, conv_impl=self.conv_impl,
                       seed=self.seed)

  def objective(self):
    """This config's training objective: the `rattr_jax.senn.SENNObjective` term."""
    from rattr_jax.senn._engine import SENNObjective
    return SENNObjective(lambda_robustness=self.lambda_robustness,
                         lambda_reconstruction=self.lambda_reconstruction,
                         lambda_sparsity=self.lambda_sparsity, convention=self.convention,
                         num_projections=self.num_projections)


#: Paper-faithful presets (``mnist``: the offline MNIST copy, 8,000/2,000, exact
#: robustness residual) and a fast CPU variant (``mnist_fast``: the embedded
#: 4,000/1,000 subset, 3 epochs, lr 3e-3, one Gaussian probe of the residual
#: per step instead of 10 backward passes; ~97% test accuracy). The paper
#: sweeps ``lambda_robustness`` over 1e-4 ... 1.
SENN_PRESETS: dict[str, SENNConfig] = {
    "mnist": SENNConfig(dataset="mnist", conceptizer="autoencoder", parametrizer="lenet",
                        num_concepts=5, dropout=0.5, lambda_robustness=1e-2,
                        learning_rate=2e-4, batch_size=200, epochs=20),
    "mnist_fast": SENNConfig(dataset="mnist_embedded", conceptizer="autoencoder",
                             parametrizer="lenet", num_concepts=5, lambda_robustness=1e-4,
                             num_projections=1, learning_rate=3e-3, batch_size=64, epochs=3),
    "breast_cancer": SENNConfig(dataset="breast_cancer", conceptizer="identity",
                                parametrizer="mlp", aggregator="sigmoid", hidden=(10, 10, 5),
                                lambda_robustness=1e-2, learning_rate=2e-3, batch_size=32,
                                epochs=60),
    "wine": SENNConfig(dataset="wine", conceptizer="identity", parametrizer="mlp",
                       hidden=(10, 10, 5), lambda_robustness=1e-2, learning_rate=2e-3,
                       batch_size=16, epochs=80),
}


def senn_preset(name: str, **overrides) -> SENNConfig:
  """A copy of preset ``name`` with ``overrides`` (e.g. ``lambda_robustness=1e-3``)."""
  V.check_choice(name, SENN_PRESETS, name="preset")
  return SENN_PRESETS[name].replace(**overrides)


# ----------------------------------------------------------------- trainer ----
@dataclasses.dataclass
class SENNHistory:
  """Per-epoch log of `fit_senn` (lists, one entry per epoch)."""

  loss: list = dataclasses.field(default_factory=list)
  prediction: list = dataclasses.field(default_factory=list)
  robustness: list = dataclasses.field(default_factory=list)
  reconstruction: list = dataclasses.field(default_factory=list)
  sparsity: list = dataclasses.field(default_factory=list)
  train_accuracy: list = dataclasses.field(default_factory=list)
  val_accuracy: list = dataclasses.field(default_factory=list)
  val_reconstruction: list = dataclasses.field(default_factory=list)
  concept_variance: list = dataclasses.field(default_factory=list)
  seconds: list = dataclasses.field(default_factory=list)

  def as_dict(self) -> dict[str, list]:
    return dataclasses.asdict(self)


@jax.jit
def _eval_chunk_stats(graphdef, state, x):
  m = nnx.merge(graphdef, state)
  logits, e = m(x, return_explanation=True)
  rec = jnp.mean((e.x_hat - x).reshape(x.shape[0], -1) ** 2, axis=1)
  return logits, e.h, rec


def concept_statistics(model: SENN, x: np.ndarray, y: np.ndarray | None = None, *,
                       batch_size: int = 500) -> dict[str, Any]:
  """Accuracy, reconstruction error and per-concept variance of ``h`` on ``(x, y)``.

  A concept whose variance is ~0 over the data has collapsed (it is a constant
  and carries no information, a failure the reproductions report).

  Returns:
    dict with ``accuracy`` (if ``y``), ``reconstruction`` (mean MSE),
    ``concept_variance`` ``[k]`` and ``concept_mean`` ``[k]`` (without the
    constant bias concept of identity concepts).
  """
  graphdef, state = nnx.split(model)
  logits, hs, recs = [], [], []
  for i in range(0, len(x), batch_size):
    lg, h, r = _eval_chunk_stats(graphdef, state, jnp.asarray(x[i:i + batch_size]))
    logits.append(np.asarray(lg))
    hs.append(np.asarray(h))
    recs.append(np.asarray(r))
  logits, h, rec = np.concatenate(logits), np.concatenate(hs), np.concatenate(recs)
  from rattr_jax.senn._stability import _has_bias
  if _has_bias(model):  # the constant bias concept has variance 0 by construction
    h = h[:, :-1]
  out = {"reconstruction": float(rec.mean()), "concept_variance": h.var(0),
         "concept_mean": h.mean(0)}
  if y is not None:
    out["accuracy"] = float(np.mean(logits.argmax(-1) == np.asarray(y)))
  return out


def fit_senn(model: SENN, x: np.ndarray, y: np.ndarray, config: SENNConfig, *,
             x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
             progress: Callable[[int, dict[str, float]], None] | None = None
             ) -> tuple[SENN, SENNHistory]:
  """Trains a SENN with Adam on the full SENN objective (`senn_loss`).

  Runs on the library's one training engine
  (`rattr_jax.training.fit` with the ``"senn"`` term, `SENNConfig.objective`,
  recording the history in its ``on_epoch`` callback): one jitted `lax.scan` over the minibatches of each
  epoch, donated state, the same step `rattr train --model senn` and
  `train_with_engine` compile. The loss weights are part of the compiled
  step, so a sweep over ``lambda_robustness`` compiles once per value.
  Shuffling (epoch ``e`` is the ``e``-th permutation of
  ``np.random.default_rng(config.seed)``), dropout and residual-probe keys
  derive from ``config.seed``.

  Args:
    model: an untrained (or partly trained) SENN, e.g. ``config.build(...)``.
    x, y: training arrays.
    config: a `SENNConfig` (its model fields are not re-read here).
    x_val, y_val: optional held-out data, evaluated after each epoch
      (accuracy, reconstruction error, concept variance).
    progress: optional callback ``progress(epoch, record)``.

  Returns:
    ``(trained_model, history)``.

  Raises:
    FloatingPointError: a non-finite loss or gradient (training stops at the
      first one; the step is not applied).
  """
  from rattr_jax import training
  x = V.check_batch(np.asarray(x), name="x")
  bs = config.batch_size
  if len(x) < bs:
    raise ValueError(f"`batch_size` ({bs}) exceeds the number of training examples ({len(x)}).")
  hist = SENNHistory()
  parts = {"loss": "senn", "prediction": "senn_ce", "robustness": "senn_robustness",
           "reconstruction": "senn_reconstruction", "sparsity": "senn_sparsity",
           "train_accuracy": "acc"}
  t0 = [time.perf_counter()]

  def on_epoch(e, met, trained):
    for field, name in parts.items():
      getattr(hist, field).append(float(np.mean(met[name])))
    if x_val is not None:
      stats = concept_statistics(trained(), x_val, y_val)
      hist.val_accuracy.append(stats.get("accuracy", float("nan")))
      hist.val_reconstruction.append(stats["reconstruction"])
      hist.concept_variance.append(stats["concept_variance"].tolist())
    hist.seconds.append(time.perf_counter() - t0[0])
    t0[0] = time.perf_counter()
    if progress is not None:
      progress(e, {k: v[-1] for k, v in hist.as_dict().items() if v})

  try:
    out = training.fit(model, x, np.asarray(y).astype(np.int32), terms=(config.objective(),),
                       epochs=config.epochs, batch_size=bs, learning_rate=config.learning_rate,
                       seed=config.seed, on_epoch=on_epoch, stop_on_nan=True)
  except FloatingPointError as err:
    raise FloatingPointError(f"SENN {err}") from None
  return out, hist


def train_senn(config: SENNConfig, *, data=None, data_dir=None,
               progress: Callable[[int, dict[str, float]], None] | None = None
               ) -> tuple[SENN, SENNHistory, Any]:
  """Loads ``config.dataset`` (unless ``data`` is given), builds and trains a SENN.

  Returns:
    ``(model, history, dataset)``; the test split serves as validation data.
  """
  from rattr_jax.data import load_dataset
  if data is None:
    data = load_dataset(config.dataset, data_dir=data_dir, seed=config.seed)
  model = config.build(data.input_shape, data.num_classes)
  model, hist = fit_senn(model, data.x_train, data.y_train, config, x_val=data.x_test,
                         y_val=data.y_test, progress=progress)
  return model, hist, data
