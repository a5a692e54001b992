"""Training configurations: frozen dataclasses, validation and the papers' presets."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rattr_jax.models._activation import as_activation

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


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """The training objective and its hyper-parameters.

  Attributes:
    name: one of `METHODS`:
      ``ce``: cross-entropy;
      ``gradient_alignment``: CE + `rattr_jax.regularizers.gradient_alignment`
      (``lambda_l2``, ``lambda_cos``, ``epsilon``, ``perturbation``);
      ``hessian_norm``: CE + ``lam`` * Hutchinson input-Hessian norm
      (``num_samples`` probes);
      ``activation_sensitivity``: CE + ``lam`` * activation sensitivity of
      ``layers`` (``form``, ``sensitivity_perturbation``, ``epsilon``,
      ``num_steps``, ``num_projections``, ``neuron_weights``);
      ``input_gradient_norm``: CE + ``lam`` * squared input-gradient norm;
      ``fgsm``: fast adversarial training (``epsilon``, ``step_size`` default
      1.25 eps); ``pgd``: PGD-AT (``epsilon``, ``step_size``, ``num_steps``);
      ``trades``: CE + ``beta`` * KL (``epsilon``, ``step_size``, ``num_steps``).
    epsilon: perturbation radius in input units (data in [0, 1]).
    lambda_l2, lambda_cos: gradient-alignment weights.
    perturbation: gradient-alignment ``delta`` (uniform, gaussian, grad_sign).
    lam: weight of single-weight regularizers (Hessian, activation
      sensitivity, input-gradient norm).
    num_samples: Hutchinson probes / random perturbations per step.
    hessian_mode: ``"auto"`` (reverse-over-reverse when the model has a
      custom-VJP convolution, else forward-over-reverse) or a mode of
      `rattr_jax.regularizers.hessian_norm`.
    layers: layer names for activation sensitivity.
    form: activation-sensitivity form (``perturbation`` or ``jacobian``).
    sensitivity_perturbation: activation-sensitivity ``delta`` (uniform,
      gaussian, fgsm, pgd).
    num_projections: random projections of the Jacobian form.
    neuron_weights: estimate per-neuron weights from data at the start of
      each epoch (`rattr_jax.regularizers.neuron_sensitivity`).
    gradient_of: input-gradient-norm target (``loss`` or ``logit``).
    num_steps: attack steps (PGD, TRADES, PGD sensitivity).
    step_size: attack step, ``None`` for the method's default.
    beta: TRADES weight.
  """

  name: str = "ce"
  epsilon: float = 0.1
  lambda_l2: float = 0.01
  lambda_cos: float = 1.0
  perturbation: str = "uniform"
  lam: float = 1e-3
  num_samples: int = 1
  hessian_mode: str = "auto"
  layers: tuple[str, ...] = ("fc1",)
  form: str = "perturbation"
  sensitivity_perturbation: str = "uniform"
  num_projections: int = 1
  neuron_weights: bool = False
  gradient_of: str = "loss"
  num_steps: int = 10
  step_size: float | None = None
  beta: float = 6.0


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
    method: the objective.
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
  """

  model: str = "cnn"
  dataset: str = "mnist_embedded"
  activation: str = "relu"
  epochs: int = 1
  batch_size: int = 64
  seed: int = 0
  method: MethodConfig = MethodConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  val_fraction: float = 0.0
  max_train: int | None = None
  max_test: int | None = None
  eval_batch_size: int = 500
  steps_per_call: int | None = None
  data_parallel: bool | None = None
  data_dir: str | None = None

  def replace(self, **changes) -> "TrainConfig":
    """A copy with top-level or dotted (``"method.lam"``) fields changed."""
    return replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
    d = dict(d)
    m = MethodConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                        for k, v in d.pop("method").items()})
    o = OptimizerConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in d.pop("optimizer").items()})
    return cls(method=m, optimizer=o, **d)


def replace(config: TrainConfig, **changes) -> TrainConfig:
  """`dataclasses.replace` that also accepts ``"method.x"``/``"optimizer.x"`` keys."""
  top: dict[str, Any] = {}
  sub: dict[str, dict[str, Any]] = {"method": {}, "optimizer": {}}
  for k, v in changes.items():
    if "." in k:
      head, tail = k.split(".", 1)
      if head not in sub:
        raise ValueError(f"Unknown config field {k!r}.")
      sub[head][tail] = v
    else:
      top[k] = v
  for head, fields in sub.items():
    if fields:
      base = top.get(head, getattr(config, head))
      names = {f.name for f in dataclasses.fields(base)}
      for f in fields:
        if f not in names:
          raise ValueError(f"Unknown config field {head}.{f!r}; expected one of {sorted(names)}.")
      top[head] = dataclasses.replace(base, **fields)
  names = {f.name for f in dataclasses.fields(config)}
  for f in top:
    if f not in names:
      raise ValueError(f"Unknown config field {f!r}; expected one of {sorted(names)}.")
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
  from rattr_jax.regularizers import _activation_sensitivity as _as
  from rattr_jax.regularizers import _gradient_alignment as _ga
  from rattr_jax.regularizers import _hessian_norm as _hn
  from rattr_jax.regularizers import _input_gradient_norm as _ig
  m, o = config.method, config.optimizer
  if m.name not in METHODS:
    raise ValueError(f"Unknown `method` {m.name!r}; expected one of {list(METHODS)}.")
  for f in ("epsilon", "lambda_l2", "lambda_cos", "lam", "beta"):
    _nonneg(getattr(m, f), f"method.{f}")
  if m.step_size is not None:
    _nonneg(m.step_size, "method.step_size")
  for f in ("num_samples", "num_projections", "num_steps"):
    _posint(getattr(m, f), f"method.{f}")
  checks = (("perturbation", _ga.PERTURBATIONS), ("hessian_mode", _hn.MODES),
            ("form", _as.FORMS), ("sensitivity_perturbation", _as.PERTURBATIONS),
            ("gradient_of", _ig.OF))
  for f, choices in checks:
    if getattr(m, f) not in choices:
      raise ValueError(f"Unknown `method.{f}` {getattr(m, f)!r}; expected one of {list(choices)}.")
  if isinstance(m.layers, str) or not m.layers or not all(isinstance(s, str) for s in m.layers):
    raise ValueError(f"`method.layers` must be a non-empty tuple of layer names; got {m.layers!r}.")
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
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not (
      0 <= config.seed < 2**32):
    raise ValueError(f"`seed` must be an int in [0, 2**32); got {config.seed!r}.")
  if m.name in ("gradient_alignment", "activation_sensitivity", "fgsm", "pgd", "trades") and (
      m.epsilon > 1):
    raise ValueError(f"`method.epsilon` is a radius in input units (inputs lie in [0, 1]) and "
                     f"must be <= 1; got {m.epsilon!r}.")
  try:
    as_activation(config.activation)
  except (ValueError, TypeError) as e:
    raise ValueError(f"Bad `activation` {config.activation!r}: {e}") from None
  return config


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
        method=MethodConfig(name="gradient_alignment", epsilon=4 / 255, lambda_l2=0.01,
                            lambda_cos=1.0, perturbation="uniform"),
        optimizer=_AGA_LENET_OPT),
    # The Hessian baseline of the same repository, lambda 1e-3.
    "hessian_cifar_lenet": TrainConfig(
        model="lenet", dataset="cifar10", activation="softplus:3", epochs=300, batch_size=128,
        method=MethodConfig(name="hessian_norm", lam=1e-3), optimizer=_AGA_LENET_OPT),
    # Madry PGD-AT at eps 8/255, 10 steps of 2/255, on the same LeNet schedule.
    "pgd_cifar_lenet": TrainConfig(
        model="lenet", dataset="cifar10", activation="relu", epochs=300, batch_size=128,
        method=MethodConfig(name="pgd", epsilon=8 / 255, num_steps=10, step_size=2 / 255),
        optimizer=_AGA_LENET_OPT),
    # Joo et al. CIFAR-10 ResNet-18: AdamW wd 1e-2, 200 epochs, (0.01, 0.1), Hessian 1e-4.
    "aga_cifar_resnet18": TrainConfig(
        model="resnet18", dataset="cifar10", activation="softplus:3", epochs=200, batch_size=128,
        method=MethodConfig(name="gradient_alignment", epsilon=4 / 255, lambda_l2=0.01,
                            lambda_cos=0.1),
        optimizer=_AGA_RESNET_OPT),
    "hessian_cifar_resnet18": TrainConfig(
        model="resnet18", dataset="cifar10", activation="softplus:3", epochs=200, batch_size=128,
        method=MethodConfig(name="hessian_norm", lam=1e-4), optimizer=_AGA_RESNET_OPT),
    # Fast CPU preset on the embedded MNIST subset (4,000 train images): a few
    # seconds per CE epoch on 2 cores, > 90% test accuracy after one epoch.
    # Softplus beta 3 as in Joo et al. (a ReLU network has a zero input
    # Hessian almost everywhere). Method settings are MNIST-scaled (see
    # `fast_cpu_method`).
    "fast_cpu": TrainConfig(
        model="cnn", dataset="mnist_embedded", activation="softplus:3", epochs=3, batch_size=32,
        method=MethodConfig(name="ce"),
        optimizer=OptimizerConfig(name="adam", learning_rate=2e-3, schedule="constant")),
}


def fast_cpu_method(name: str) -> MethodConfig:
  """MNIST-scale settings of each method for the ``fast_cpu`` preset.

  gradient alignment: eps 0.1, (0.01, 1.0); Hessian: lambda 1e-3; activation
  sensitivity: lambda 1 on ``fc1``, uniform eps 0.1; input-gradient norm:
  lambda 1; FGSM eps 0.1; PGD / TRADES eps 0.1, 5 steps of 0.025, beta 6.
  """
  if name not in METHODS:
    raise ValueError(f"Unknown `method` {name!r}; expected one of {list(METHODS)}.")
  table = {
      "ce": MethodConfig(name="ce"),
      "gradient_alignment": MethodConfig(name=name, epsilon=0.1, lambda_l2=0.01, lambda_cos=1.0),
      "hessian_norm": MethodConfig(name=name, lam=1e-3),
      "activation_sensitivity": MethodConfig(name=name, lam=1.0, epsilon=0.1, layers=("fc1",)),
      "input_gradient_norm": MethodConfig(name=name, lam=1.0),
      "fgsm": MethodConfig(name=name, epsilon=0.1),
      "pgd": MethodConfig(name=name, epsilon=0.1, num_steps=5, step_size=0.025),
      "trades": MethodConfig(name=name, epsilon=0.1, num_steps=5, step_size=0.025, beta=6.0),
  }
  return table[name]


def preset(name: str, *, method: str | None = None, **overrides) -> TrainConfig:
  """A preset config, optionally with another method and field overrides.

  Args:
    name: a key of `PRESETS`.
    method: replace the preset's method (for ``fast_cpu``, with that method's
      MNIST-scale settings from `fast_cpu_method`).
    **overrides: fields to change, top-level or dotted (``"method.lam"``).
  """
  if name not in PRESETS:
    raise ValueError(f"Unknown `preset` {name!r}; expected one of {sorted(PRESETS)}.")
  cfg = PRESETS[name]
  if method is not None:
    if name == "fast_cpu":
      cfg = dataclasses.replace(cfg, method=fast_cpu_method(method))
    else:
      if method not in METHODS:
        raise ValueError(f"Unknown `method` {method!r}; expected one of {list(METHODS)}.")
      cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name=method))
  cfg = replace(cfg, **overrides) if overrides else cfg
  return validate(cfg)

