"""Training configurations: frozen dataclasses, validation and the papers' presets."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rattr_jax.models import as_activation
from rattr_jax.training._term import check_term, Term, term_from_dict, with_params
from rattr_jax.training.terms import (ActivationSensitivity, CrossEntropy, FGSM,
                                      GradientAlignment, HessianNorm, InputGradientNorm, PGD,
                                      TRADES)

#: Named objectives (``--method``): each is a tuple of terms (`method_terms`).
METHODS = ("ce", "gradient_alignment", "hessian_norm", "activation_sensitivity",
           "input_gradient_norm", "fgsm", "pgd", "trades")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "multistep", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer, learning-rate schedule and gradient clipping.

  Attributes:
    name: ``"adam"`` (with ``weight_decay`` as an L2 term added to the
      gradient, as PyTorch's ``Adam(weight_decay=...)``), ``"adamw"``
      (decoupled decay) or ``"sgd"`` (with ``momentum``/``nesterov``).
    learning_rate: peak learning rate.
    weight_decay: decay coefficient (>= 0).
    momentum: SGD momentum.
    nesterov: SGD Nesterov momentum.
    schedule: ``"constant"``, ``"multistep"`` (multiply by ``gamma`` at each
      epoch in ``milestones``, PyTorch's MultiStepLR) or ``"cosine"`` (cosine
      decay to 0 over all steps, after ``warmup_epochs`` of linear warm-up).
    milestones: epochs at which the multistep schedule decays.
    gamma: multistep decay factor.
    warmup_epochs: linear warm-up length of the cosine schedule.
    clip_norm: global gradient-norm clipping threshold, or ``None``.
  """

  name: str = "adam"
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  momentum: float = 0.9
  nesterov: bool = False
  schedule: str = "constant"
  milestones: tuple[int, ...] = ()
  gamma: float = 0.1
  warmup_epochs: int = 0
  clip_norm: float | None = None


def method_terms(name: str, **params) -> tuple[Term, ...]:
  """The terms of a named objective, with MNIST-scale defaults and ``params`` applied.

  ``ce``: cross-entropy; ``gradient_alignment``: CE + `GradientAlignment`
  (eps 0.1, lambda_l2 0.01, lambda_cos 1); ``hessian_norm``: CE +
  `HessianNorm` (lam 1e-3); ``activation_sensitivity``: CE +
  `ActivationSensitivity` (lam 1 on ``fc1``, uniform eps 0.1);
  ``input_gradient_norm``: CE + `InputGradientNorm` (lam 1); ``fgsm``: `FGSM`
  (eps 0.1); ``pgd``: `PGD` (eps 0.1, 5 steps of 0.025); ``trades``: CE +
  `TRADES` (eps 0.1, 5 steps of 0.025, beta 6).

  ``params`` are set on every term that has the field (`with_params`; the old
  flat names ``sensitivity_perturbation``, ``hessian_mode`` and
  ``gradient_of`` are accepted); one no term takes is an error.

  Example:
    >>> [t.name for t in method_terms("trades", epsilon=8 / 255)]
    ['ce', 'trades']
  """
  if name not in METHODS:
    raise ValueError(f"Unknown `method` {name!r}; expected one of {list(METHODS)}.")
  ce = CrossEntropy()
  table = {
      "ce": (ce,),
      "gradient_alignment": (ce, GradientAlignment(epsilon=0.1, lambda_l2=0.01, lambda_cos=1.0)),
      "hessian_norm": (ce, HessianNorm(lam=1e-3)),
      "activation_sensitivity": (ce, ActivationSensitivity(lam=1.0, epsilon=0.1,
                                                           layers=("fc1",))),
      "input_gradient_norm": (ce, InputGradientNorm(lam=1.0)),
      "fgsm": (FGSM(epsilon=0.1),),
      "pgd": (PGD(epsilon=0.1, num_steps=5, step_size=0.025),),
      "trades": (ce, TRADES(epsilon=0.1, num_steps=5, step_size=0.025, beta=6.0)),
  }
  return with_params(table[name], **params)


def objective_name(terms) -> str:
  """A short label of an objective: its term names joined by ``+``."""
  return "+".join(t.name for t in terms)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a training run (JSON-serialisable).

  Attributes:
    model: zoo model name (`rattr_jax.models.MODELS`), or any label when a
      model is passed to `train` directly.
    dataset: `rattr_jax.data.load_dataset` name.
    activation: model activation (``"relu"``, ``"softplus:3"``, ...).
    epochs: number of epochs.
    batch_size: global batch size (divisible by the device count when data
      parallel).
    seed: seed of initialisation, shuffling and every random draw.
    terms: the objective, a tuple of `rattr_jax.training.Term` (the loss is
      ``sum(term.weight * term.loss)``); see `method_terms` for the named ones.
    optimizer: optimizer and schedule.
    val_fraction: fraction of the training set held out for validation
      (best-checkpoint selection); ``0`` validates on the test split, as the
      gradient-alignment reference code does.
    max_train, max_test: optional dataset truncation.
    eval_batch_size: chunk size of evaluation.
    steps_per_call: training steps fused in one compiled `lax.scan` call
      (progress updates between calls); ``None`` chooses automatically.
    data_parallel: shard the batch over all devices (``None``: when there is
      more than one device).
    data_dir: directory of local dataset copies.
    lazy_data: load the dataset with ``load_dataset(..., lazy=lazy_data)``: the
      local ``.npz`` files are memory-mapped and each process reads only the
      rows of its columns of each batch (and of its evaluation rows), instead
      of the whole dataset; results are identical. ``None`` (default): lazy
      when the job has several processes (``jax.process_count() > 1``). The
      in-memory datasets (embedded, scikit-learn, tfds) ignore it.
  """

  model: str = "cnn"
  dataset: str = "mnist_embedded"
  activation: str = "relu"
  epochs: int = 1
  batch_size: int = 64
  seed: int = 0
  terms: tuple[Term, ...] = (CrossEntropy(),)
  optimizer: OptimizerConfig = OptimizerConfig()
  val_fraction: float = 0.0
  max_train: int | None = None
  max_test: int | None = None
  eval_batch_size: int = 500
  steps_per_call: int | None = None
  data_parallel: bool | None = None
  data_dir: str | None = None
  lazy_data: bool | None = None

  def replace(self, **changes) -> "TrainConfig":
    """A copy with top-level or dotted fields changed: ``"optimizer.learning_rate"``, or
    ``"<term>.<field>"`` for a term of the objective (``"pgd.epsilon"``)."""
    return replace(self, **changes)

  @property
  def objective(self) -> str:
    """The objective's label (term names joined by ``+``)."""
    return objective_name(self.terms)

  def term(self, name: str) -> Term | None:
    """The objective's term called ``name``, or ``None``."""
    return next((t for t in self.terms if t.name == name), None)

  def to_dict(self) -> dict[str, Any]:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out["optimizer"] = dataclasses.asdict(self.optimizer)
    out["terms"] = [t.to_dict() for t in self.terms]
    return out

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
    d = dict(d)
    terms = tuple(term_from_dict(t) for t in d.pop("terms"))
    o = OptimizerConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in d.pop("optimizer").items()})
    return cls(terms=terms, optimizer=o, **d)


def replace(config: TrainConfig, **changes) -> TrainConfig:
  """`dataclasses.replace` that also accepts ``"optimizer.x"`` and ``"<term>.x"`` keys."""
  top: dict[str, Any] = {}
  opt: dict[str, Any] = {}
  per_term: dict[str, dict[str, Any]] = {}
  for k, v in changes.items():
    if "." in k:
      head, tail = k.split(".", 1)
      if head == "optimizer":
        opt[tail] = v
      else:
        per_term.setdefault(head, {})[tail] = v
    else:
      top[k] = v
  names = {f.name for f in dataclasses.fields(config)}
  for f in top:
    if f not in names:
      raise ValueError(f"Unknown config field {f!r}; expected one of {sorted(names)}.")
  if opt:
    base = top.get("optimizer", config.optimizer)
    known = {f.name for f in dataclasses.fields(base)}
    for f in opt:
      if f not in known:
        raise ValueError(f"Unknown config field optimizer.{f!r}; expected one of "
                         f"{sorted(known)}.")
    top["optimizer"] = dataclasses.replace(base, **opt)
  if per_term:
    terms = tuple(top.get("terms", config.terms))
    by_name = {t.name: i for i, t in enumerate(terms)}
    for head, fields in per_term.items():
      if head not in by_name:
        raise ValueError(f"Unknown config field {head}.{next(iter(fields))!r}: {head!r} is "
                         f"neither `optimizer` nor a term of the objective "
                         f"({objective_name(terms)}).")
      i = by_name[head]
      known = {f.name for f in dataclasses.fields(terms[i])}
      for f in fields:
        if f not in known:
          raise ValueError(f"Unknown config field {head}.{f!r}; expected one of "
                           f"{sorted(known)}.")
      terms = terms[:i] + (terms[i].replace(**{
          f: (tuple(v) if isinstance(v, list) else v) for f, v in fields.items()}),) + terms[i + 1:]
    top["terms"] = terms
  return dataclasses.replace(config, **top)


def _nonneg(value, name):
  if (not isinstance(value, (int, float)) or isinstance(value, bool)
      or not (math.isfinite(value) and value >= 0)):
    raise ValueError(f"`{name}` must be a finite non-negative number; got {value!r}.")


def _posint(value, name):
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"`{name}` must be a positive int; got {value!r}.")


def validate(config: TrainConfig) -> TrainConfig:
  """Checks a config and raises ``ValueError`` naming the bad field."""
  o = config.optimizer
  terms = config.terms
  if isinstance(terms, Term) or not isinstance(terms, (tuple, list)) or not terms:
    raise ValueError(f"`terms` must be a non-empty tuple of training Terms; got {terms!r}.")
  for t in terms:
    check_term(t)
  names = [t.name for t in terms]
  if len(set(names)) != len(names):
    raise ValueError(f"`terms` must have distinct names; got {names}.")
  if o.name not in OPTIMIZERS:
    raise ValueError(f"Unknown `optimizer.name` {o.name!r}; expected one of {list(OPTIMIZERS)}.")
  if o.schedule not in SCHEDULES:
    raise ValueError(f"Unknown `optimizer.schedule` {o.schedule!r}; expected one of "
                     f"{list(SCHEDULES)}.")
  if (not isinstance(o.learning_rate, (int, float)) or isinstance(o.learning_rate, bool)
      or not (math.isfinite(o.learning_rate) and o.learning_rate > 0)):
    raise ValueError(f"`optimizer.learning_rate` must be a finite positive number; got "
                     f"{o.learning_rate!r}.")
  for f in ("weight_decay", "momentum", "gamma", "warmup_epochs"):
    _nonneg(getattr(o, f), f"optimizer.{f}")
  if o.clip_norm is not None and not (isinstance(o.clip_norm, (int, float))
                                      and math.isfinite(o.clip_norm) and o.clip_norm > 0):
    raise ValueError(f"`optimizer.clip_norm` must be finite and positive, or None; got "
                     f"{o.clip_norm!r}.")
  if any((not isinstance(e, int)) or e <= 0 for e in o.milestones):
    raise ValueError(f"`optimizer.milestones` must be positive epochs; got {o.milestones!r}.")
  _posint(config.epochs, "epochs")
  _posint(config.batch_size, "batch_size")
  _posint(config.eval_batch_size, "eval_batch_size")
  if config.steps_per_call is not None:
    _posint(config.steps_per_call, "steps_per_call")
  if not (isinstance(config.val_fraction, (int, float)) and 0 <= config.val_fraction < 1):
    raise ValueError(f"`val_fraction` must lie in [0, 1); got {config.val_fraction!r}.")
  for f in ("max_train", "max_test"):
    if getattr(config, f) is not None:
      _posint(getattr(config, f), f)
  if config.lazy_data is not None and not isinstance(config.lazy_data, bool):
    raise ValueError(f"`lazy_data` must be True, False or None; got {config.lazy_data!r}.")
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not (
      0 <= config.seed < 2**32):
    raise ValueError(f"`seed` must be an int in [0, 2**32); got {config.seed!r}.")
  try:
    as_activation(config.activation)
  except (ValueError, TypeError) as e:
    raise ValueError(f"Bad `activation` {config.activation!r}: {e}") from None
  return dataclasses.replace(config, terms=tuple(terms)) if isinstance(terms, list) else config


# --------------------------------------------------------------------------- presets

_AGA_LENET_OPT = OptimizerConfig(name="adam", learning_rate=1e-3, weight_decay=4e-5,
                                 schedule="multistep", milestones=(100, 150), gamma=0.1,
                                 clip_norm=0.5)
_AGA_RESNET_OPT = OptimizerConfig(name="adamw", learning_rate=1e-3, weight_decay=1e-2,
                                  schedule="multistep", milestones=(100, 150), gamma=0.1,
                                  clip_norm=0.5)

PRESETS: dict[str, TrainConfig] = {
    # Joo et al. 2023, CIFAR-10 LeNet: Adam lr 1e-3 (wd 4e-5), 300 epochs, MultiStep
    # [100, 150], clip 0.5, batch 128, lambda_l2 0.01, lambda_cos 1.0, eps 4/255,
    # softplus beta 3 (the reference perturbs in per-channel-normalised space by
    # eps/std; our inputs are in [0, 1], so eps is 4/255 in pixel units).
    "aga_cifar_lenet": TrainConfig(
        model="lenet", dataset="cifar10", activation="softplus:3", epochs=300, batch_size=128,
        terms=(CrossEntropy(), GradientAlignment(epsilon=4 / 255, lambda_l2=0.01, lambda_cos=1.0,
                                                 perturbation="uniform")),
        optimizer=_AGA_LENET_OPT),
    # The Hessian baseline of the same repository, lambda 1e-3.
    "hessian_cifar_lenet": TrainConfig(
        model="lenet", dataset="cifar10", activation="softplus:3", epochs=300, batch_size=128,
        terms=(CrossEntropy(), HessianNorm(lam=1e-3)), optimizer=_AGA_LENET_OPT),
    # Madry PGD-AT at eps 8/255, 10 steps of 2/255, on the same LeNet schedule.
    "pgd_cifar_lenet": TrainConfig(
        model="lenet", dataset="cifar10", activation="relu", epochs=300, batch_size=128,
        terms=(PGD(epsilon=8 / 255, num_steps=10, step_size=2 / 255),),
        optimizer=_AGA_LENET_OPT),
    # Joo et al. CIFAR-10 ResNet-18: AdamW wd 1e-2, 200 epochs, (0.01, 0.1), Hessian 1e-4.
    "aga_cifar_resnet18": TrainConfig(
        model="resnet18", dataset="cifar10", activation="softplus:3", epochs=200, batch_size=128,
        terms=(CrossEntropy(), GradientAlignment(epsilon=4 / 255, lambda_l2=0.01, lambda_cos=0.1)),
        optimizer=_AGA_RESNET_OPT),
    "hessian_cifar_resnet18": TrainConfig(
        model="resnet18", dataset="cifar10", activation="softplus:3", epochs=200, batch_size=128,
        terms=(CrossEntropy(), HessianNorm(lam=1e-4)), optimizer=_AGA_RESNET_OPT),
    # Fast CPU preset on the embedded MNIST subset (4,000 train images): a few
    # seconds per CE epoch on 2 cores, > 90% test accuracy after one epoch.
    # Softplus beta 3 as in Joo et al. (a ReLU network has a zero input
    # Hessian almost everywhere). Method settings are MNIST-scaled (see
    # `method_terms`).
    "fast_cpu": TrainConfig(
        model="cnn", dataset="mnist_embedded", activation="softplus:3", epochs=3, batch_size=32,
        terms=(CrossEntropy(),),
        optimizer=OptimizerConfig(name="adam", learning_rate=2e-3, schedule="constant")),
}


def preset(name: str, *, method: str | None = None, **overrides) -> TrainConfig:
  """A preset config, optionally with another objective and field overrides.

  Args:
    name: a key of `PRESETS`.
    method: replace the preset's objective by `method_terms(method)` (MNIST-scale
      settings); for presets other than ``fast_cpu`` the preset's radius
      ``epsilon`` carries over to the new terms that have one.
    **overrides: fields to change, top-level or dotted (``"optimizer.learning_rate"``,
      ``"<term>.<field>"`` such as ``"pgd.epsilon"``).
  """
  if name not in PRESETS:
    raise ValueError(f"Unknown `preset` {name!r}; expected one of {sorted(PRESETS)}.")
  cfg = PRESETS[name]
  if method is not None:
    terms = method_terms(method)
    eps = [t.epsilon for t in cfg.terms if hasattr(t, "epsilon")]
    if name != "fast_cpu" and eps:
      terms = tuple(t.replace(epsilon=eps[0]) if hasattr(t, "epsilon") else t for t in terms)
    cfg = dataclasses.replace(cfg, terms=terms)
  cfg = replace(cfg, **overrides) if overrides else cfg
  return validate(cfg)
