"""Study configuration: a TOML file (stdlib `tomllib`) parsed into frozen dataclasses.

A study names the data and model, the training methods (each a labelled table
of training hyper-parameters), the seeds, the explainers, the attacks and
their radii, the metrics and the model diagnostics. `load_config` validates
every field and raises a one-line ``ValueError`` that names the field
(``methods.pgd.epsilon``) and lists the valid values.

Units: every radius (``epsilon``) is in input units; inputs live in
``[0, 1]``, so the papers' ``8/255`` is written ``0.0314`` or the string
``"8/255"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tomllib
from importlib import resources
from typing import Any

#: Training objectives a method may name (``objective = ...``).
OBJECTIVES = ("ce", "gradient_alignment", "hessian_norm", "activation_sensitivity",
              "input_gradient_norm", "fgsm", "pgd", "trades", "senn")
#: Explainers a study may name. ``decoy`` is DANCE (Lu et al. 2021): the range of the
#: ``base`` explainer over decoys that keep the model's features at ``layer`` (default: the
#: model's second layer, `rattr_jax.attribution.decoy_default_layer`) while one patch moves.
EXPLAINERS = ("gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "decoy")
#: Attacks a study may name.
ATTACKS = ("random_sign", "topk", "mass_center", "targeted", "frame")
SIMILARITIES = ("topk_intersection", "spearman", "pearson", "ssim", "cosine", "center_shift")
ROBUSTNESS = ("max_sensitivity", "local_lipschitz", "senn_stability")
FAITHFULNESS = ("insertion", "deletion", "infidelity", "senn_faithfulness")
SANITY = ("random_map", "parameter_randomization")
DIAGNOSTICS = ("accuracy", "robust_accuracy", "train_time", "gradient_norm", "hessian_top_eig",
               "hessian_frobenius")
MODELS = ("cnn", "mlp", "lenet", "resnet18")
#: ``training.vectorize_seeds``: train the seeds of a method as one vmapped program
#: (`rattr_jax.training.train_many`). ``auto``: where it was measured to win (the MLP; on the
#: conv nets it loses, see the README's speed section); ``always``; ``never``.
VECTORIZE = ("auto", "always", "never")
#: Models on which ``auto`` vectorizes the seeds.
VECTORIZE_WINS = ("mlp",)
#: ``compute.onednn``: which convolutions the study's programs use on CPU
#: (`rattr_jax.models.onednn_convolutions`). ``on``: oneDNN's (faster to run; jaxlib
#: 0.10.2 cannot store those programs in the persistent compilation cache, so
#: `rattr study` runs such a study without it); ``off``: XLA's own (every program cacheable);
#: ``auto``: the process default (``RATTR_JAX_ONEDNN``, else oneDNN where available).
#: An explicitly set ``RATTR_JAX_ONEDNN`` wins over ``on``/``off``.
ONEDNN_SETTINGS = ("auto", "on", "off")
STAGES = ("train", "explain", "attack", "score", "aggregate", "report")

# Training-method keys passed to `rattr_jax.training.method_terms` (set on every term that has the field).
_METHOD_KEYS = {"epsilon": float, "lambda_l2": float, "lambda_cos": float, "perturbation": str,
                "lam": float, "num_samples": int, "hessian_mode": str, "layers": tuple,
                "form": str, "sensitivity_perturbation": str, "num_projections": int,
                "neuron_weights": bool, "gradient_of": str, "num_steps": int,
                "step_size": float, "beta": float}
_METHOD_OWN = {"objective": str, "activation": str, "learning_rate": float, "epochs": int}


def _number(value: Any, field: str) -> float:
  """A finite float; accepts fractions written as strings (``"8/255"``)."""
  if isinstance(value, bool):
    raise ValueError(f"`{field}` must be a number; got {value!r}.")
  if isinstance(value, str):
    try:
      if "/" in value:
        num, den = value.split("/", 1)
        value = float(num) / float(den)
      else:
        value = float(value)
    except (ValueError, ZeroDivisionError):
      raise ValueError(f"`{field}` must be a number or a fraction like '8/255'; "
                       f"got {value!r}.") from None
  if not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"`{field}` must be a finite number; got {value!r}.")
  return float(value)


def _posint(value: Any, field: str, *, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"`{field}` must be an integer >= {minimum}; got {value!r}.")
  return value


def _choice(value: Any, field: str, valid) -> str:
  if value not in valid:
    raise ValueError(f"Unknown `{field}` {value!r}; expected one of {list(valid)}.")
  return value


def _names(value: Any, field: str, valid) -> tuple[str, ...]:
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"`{field}` must be a list of names from {list(valid)}; got {value!r}.")
  for v in value:
    _choice(v, field, valid)
  if len(set(value)) != len(value):
    raise ValueError(f"`{field}` lists a name twice: {value!r}.")
  return tuple(value)


def _table(d: dict, key: str, field: str) -> dict:
  v = d.get(key, {})
  if not isinstance(v, dict):
    raise ValueError(f"`{field}` must be a table; got {v!r}.")
  return v


def _unknown(d: dict, allowed, field: str) -> None:
  for k in d:
    if k not in allowed:
      raise ValueError(f"Unknown field `{field}.{k}`; expected one of {sorted(allowed)}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Dataset, evaluation images and training-set size.

  Attributes:
    dataset: a `rattr_jax.data.load_dataset` name.
    data_dir: directory of local ``.npz`` copies ("" = default lookup).
    num_eval: evaluation images (the first of the seeded test order).
    max_train: training images (None = all).
    split_seed: seed of the dataset order (fixes the evaluation images).
  """
  dataset: str = "mnist_embedded"
  data_dir: str = ""
  num_eval: int = 32
  max_train: int | None = None
  split_seed: int = 0


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One training method: an objective, its activation and hyper-parameters."""
  label: str
  objective: str
  activation: str = "relu"
  learning_rate: float | None = None
  epochs: int | None = None
  params: tuple[tuple[str, Any], ...] = ()

  def param(self, name: str, default: Any = None) -> Any:
    return dict(self.params).get(name, default)


@dataclasses.dataclass(frozen=True)
class ExplainerSpec:
  """One explainer with its settings (bound once)."""
  name: str
  params: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """Attacks, radii and their shared settings.

  Attributes:
    names: attacks to run (`ATTACKS`).
    epsilons: L-infinity radii in input units.
    explainers: which explainers are attacked (each costs a full attack).
    num_steps: signed-gradient steps (frame attack: Adam steps).
    step_size: step in input units, or None for ``2.5 * epsilon / num_steps``.
    k: top-k features of the top-k attack and the top-k intersection.
    surrogate_beta: softplus beta of the surrogate for ReLU models (smooth
      models are attacked exactly).
    select_on: ``"measure"`` keeps the iterate with the best value of the
      attacked measure on the real model's map (Ghorbani's code; default),
      ``"model"`` the best attack objective on the real map, ``"surrogate"``
      the best surrogate objective.
  """
  names: tuple[str, ...] = ("random_sign", "topk", "mass_center")
  epsilons: tuple[float, ...] = (0.05, 0.1)
  explainers: tuple[str, ...] = ("gradient",)
  num_steps: int = 20
  step_size: float | None = None
  k: int = 78
  surrogate_beta: float = 10.0
  select_on: str = "measure"


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """Metrics and their settings (radii in input units)."""
  similarity: tuple[str, ...] = SIMILARITIES
  robustness: tuple[str, ...] = ROBUSTNESS
  faithfulness: tuple[str, ...] = ("insertion", "deletion", "infidelity")
  sanity: tuple[str, ...] = SANITY
  robustness_epsilon: float = 0.05
  num_samples: int = 8
  lipschitz_steps: int = 5
  curve_steps: int = 16


@dataclasses.dataclass(frozen=True)
class DiagnosticSpec:
  """Model diagnostics: robust accuracy by PGD and the input-Hessian geometry."""
  pgd_epsilon: float = 0.1
  pgd_steps: int = 10
  pgd_restarts: int = 1
  hessian_iters: int = 8
  hutchinson_samples: int = 8
  num_examples: int = 16


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """A whole study (see the module docstring and ``rattr_jax/study/presets``)."""
  name: str
  description: str
  model: str
  model_settings: tuple[tuple[str, Any], ...]
  data: DataConfig
  seeds: tuple[int, ...]
  epochs: int
  batch_size: int
  learning_rate: float
  methods: tuple[MethodSpec, ...]
  explainers: tuple[ExplainerSpec, ...]
  attacks: AttackSpec
  metrics: MetricSpec
  diagnostics: DiagnosticSpec
  baseline_method: str
  source: str = ""
  vectorize_seeds: str = "auto"
  onednn: str = "auto"

  def method(self, label: str) -> MethodSpec:
    return {m.label: m for m in self.methods}[label]

  def explainer(self, name: str) -> ExplainerSpec:
    return {e.name: e for e in self.explainers}[name]

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.pop("source")
    return d

  def locked(self) -> dict[str, Any]:
    """Fields every result depends on; they cannot change under an existing ``--out``."""
    return {"data": dataclasses.asdict(self.data), "model": self.model,
            "model_settings": dict(self.model_settings)}


def stable_hash(obj: Any, n: int = 12) -> str:
  """A short SHA-256 of a JSON-serialisable object (sorted keys)."""
  blob = json.dumps(obj, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:n]


def _method(label: str, d: Any) -> MethodSpec:
  field = f"methods.{label}"
  if not isinstance(d, dict):
    raise ValueError(f"`{field}` must be a table; got {d!r}.")
  _unknown(d, set(_METHOD_KEYS) | set(_METHOD_OWN), field)
  if "objective" not in d:
    raise ValueError(f"`{field}.objective` is required; expected one of {list(OBJECTIVES)}.")
  objective = _choice(d["objective"], f"{field}.objective", OBJECTIVES)
  activation = d.get("activation", "relu")
  from rattr_jax.models import as_activation
  try:
    as_activation(activation)
  except (ValueError, TypeError) as e:
    raise ValueError(f"`{field}.activation`: {e}") from None
  params = []
  for k, typ in _METHOD_KEYS.items():
    if k not in d:
      continue
    v = d[k]
    if typ is float:
      v = _number(v, f"{field}.{k}")
      if v < 0:
        raise ValueError(f"`{field}.{k}` must be >= 0; got {v!r}.")
    elif typ is int:
      v = _posint(v, f"{field}.{k}")
    elif typ is tuple:
      if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
        raise ValueError(f"`{field}.{k}` must be a non-empty list of names; got {v!r}.")
      v = tuple(v)
    elif typ is bool:
      if not isinstance(v, bool):
        raise ValueError(f"`{field}.{k}` must be true or false; got {v!r}.")
    elif not isinstance(v, str):
      raise ValueError(f"`{field}.{k}` must be a string; got {v!r}.")
    params.append((k, v))
  lr = d.get("learning_rate")
  if lr is not None:
    lr = _number(lr, f"{field}.learning_rate")
    if lr <= 0:
      raise ValueError(f"`{field}.learning_rate` must be > 0; got {lr!r}.")
  epochs = d.get("epochs")
  if epochs is not None:
    epochs = _posint(epochs, f"{field}.epochs")
  return MethodSpec(label=label, objective=objective, activation=activation, learning_rate=lr,
                    epochs=epochs, params=tuple(params))


_EXPLAINER_PARAMS = {
    "gradient": {}, "input_x_gradient": {},
    "integrated_gradients": {"num_steps": int, "method": str},
    "smoothgrad": {"num_samples": int, "stddev": float},
    # DANCE: decoy generation (patch geometry, layer bound, solver steps), the base
    # explainer, and how many of the evaluation images it explains (it costs about
    # 2 * patches * num_steps model gradients per image; the others are NaN, left out of
    # every mean).
    "decoy": {"layer": str, "base": str, "patch_size": int, "stride": int, "epsilon": float,
              "num_steps": int, "step_size": float, "num_examples": int},
}
DECOY_BASES = ("gradient", "smoothgrad", "integrated_gradients")


def _explainer(name: str, d: Any) -> ExplainerSpec:
  field = f"explainers.{name}"
  _choice(name, "explainers", EXPLAINERS)
  if not isinstance(d, dict):
    raise ValueError(f"`{field}` must be a table; got {d!r}.")
  allowed = _EXPLAINER_PARAMS[name]
  _unknown(d, allowed, field)
  params = []
  for k, v in d.items():
    if allowed[k] is int:
      v = _posint(v, f"{field}.{k}")
    elif allowed[k] is float:
      v = _number(v, f"{field}.{k}")
    elif not isinstance(v, str):
      raise ValueError(f"`{field}.{k}` must be a string; got {v!r}.")
    if name == "decoy" and k == "base":
      _choice(v, f"{field}.base", DECOY_BASES)
    params.append((k, v))
  return ExplainerSpec(name=name, params=tuple(sorted(params)))


def parse_config(raw: dict[str, Any], *, source: str = "") -> StudyConfig:
  """Validates a parsed TOML document and returns a `StudyConfig`."""
  top = {"name", "description", "model", "data", "training", "methods", "explainers", "attacks",
         "metrics", "diagnostics", "compute"}
  _unknown(raw, top, "study")
  name = raw.get("name", "study")
  if not isinstance(name, str) or not name:
    raise ValueError(f"`name` must be a non-empty string; got {name!r}.")
  description = str(raw.get("description", ""))
  model_t = raw.get("model", {"name": "cnn"})
  if isinstance(model_t, str):
    model_t = {"name": model_t}
  if not isinstance(model_t, dict):
    raise ValueError(f"`model` must be a table or a name; got {model_t!r}.")
  _unknown(model_t, {"name", "widths"}, "model")
  model = _choice(model_t.get("name", "cnn"), "model.name", MODELS)
  model_settings = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                for k, v in model_t.items() if k != "name"))

  dt = _table(raw, "data", "data")
  _unknown(dt, {f.name for f in dataclasses.fields(DataConfig)}, "data")
  from rattr_jax.data import DATASETS
  dataset = _choice(dt.get("dataset", "mnist_embedded"), "data.dataset", DATASETS)
  data_dir = dt.get("data_dir", "")
  if not isinstance(data_dir, str):
    raise ValueError(f"`data.data_dir` must be a string; got {data_dir!r}.")
  if data_dir and not os.path.isdir(os.path.expanduser(data_dir)):
    raise ValueError(f"`data.data_dir` {data_dir!r} is not a directory.")
  max_train = dt.get("max_train")
  data = DataConfig(dataset=dataset, data_dir=data_dir,
                    num_eval=_posint(dt.get("num_eval", 32), "data.num_eval", minimum=2),
                    max_train=None if max_train is None else _posint(max_train, "data.max_train"),
                    split_seed=_posint(dt.get("split_seed", 0), "data.split_seed", minimum=0))

  tr = _table(raw, "training", "training")
  _unknown(tr, {"seeds", "epochs", "batch_size", "learning_rate", "baseline", "vectorize_seeds"},
           "training")
  vectorize = tr.get("vectorize_seeds", "auto")
  vectorize = {True: "always", False: "never"}.get(vectorize, vectorize) \
      if isinstance(vectorize, bool) else vectorize
  _choice(vectorize, "training.vectorize_seeds", VECTORIZE)
  seeds = tr.get("seeds", [0])
  if (not isinstance(seeds, list) or not seeds
      or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31
                 for s in seeds) or len(set(seeds)) != len(seeds)):
    raise ValueError(f"`training.seeds` must be a non-empty list of distinct integers in "
                     f"[0, 2**31); got {seeds!r}.")
  epochs = _posint(tr.get("epochs", 1), "training.epochs")
  batch_size = _posint(tr.get("batch_size", 32), "training.batch_size")
  lr = _number(tr.get("learning_rate", 2e-3), "training.learning_rate")
  if lr <= 0:
    raise ValueError(f"`training.learning_rate` must be > 0; got {lr!r}.")

  mt = _table(raw, "methods", "methods")
  if not mt:
    raise ValueError(f"`methods` must name at least one method, e.g. [methods.ce] with "
                     f"objective = 'ce'; objectives: {list(OBJECTIVES)}.")
  methods = tuple(_method(label, d) for label, d in mt.items())
  baseline = tr.get("baseline", methods[0].label)
  _choice(baseline, "training.baseline", [m.label for m in methods])

  et = _table(raw, "explainers", "explainers")
  if not et:
    et = {"gradient": {}}
  explainers = tuple(_explainer(n, d) for n, d in et.items())
  enames = tuple(e.name for e in explainers)

  at = _table(raw, "attacks", "attacks")
  _unknown(at, {f.name for f in dataclasses.fields(AttackSpec)}, "attacks")
  eps = at.get("epsilons", [0.05, 0.1])
  if not isinstance(eps, list) or not eps:
    raise ValueError(f"`attacks.epsilons` must be a non-empty list of radii; got {eps!r}.")
  eps = tuple(_number(e, "attacks.epsilons") for e in eps)
  if any(e <= 0 or e > 1 for e in eps):
    raise ValueError(f"`attacks.epsilons` must lie in (0, 1] (input units); got {list(eps)}.")
  step = at.get("step_size")
  attacks = AttackSpec(
      names=_names(at.get("names", list(AttackSpec.names)), "attacks.names", ATTACKS),
      epsilons=eps,
      explainers=_names(at.get("explainers", [enames[0]]), "attacks.explainers", enames),
      num_steps=_posint(at.get("num_steps", 20), "attacks.num_steps"),
      step_size=None if step is None else _number(step, "attacks.step_size"),
      k=_posint(at.get("k", 78), "attacks.k"),
      surrogate_beta=_number(at.get("surrogate_beta", 10.0), "attacks.surrogate_beta"),
      select_on=_choice(at.get("select_on", "measure"), "attacks.select_on",
                        ("measure", "model", "surrogate")))
  if attacks.surrogate_beta <= 0:
    raise ValueError(f"`attacks.surrogate_beta` must be > 0; got {attacks.surrogate_beta}.")

  mtab = _table(raw, "metrics", "metrics")
  _unknown(mtab, {f.name for f in dataclasses.fields(MetricSpec)}, "metrics")
  ms = MetricSpec()
  metrics = MetricSpec(
      similarity=_names(mtab.get("similarity", list(ms.similarity)), "metrics.similarity",
                        SIMILARITIES),
      robustness=_names(mtab.get("robustness", list(ms.robustness)), "metrics.robustness",
                        ROBUSTNESS),
      faithfulness=_names(mtab.get("faithfulness", list(ms.faithfulness)),
                          "metrics.faithfulness", FAITHFULNESS),
      sanity=_names(mtab.get("sanity", list(ms.sanity)), "metrics.sanity", SANITY),
      robustness_epsilon=_number(mtab.get("robustness_epsilon", ms.robustness_epsilon),
                                 "metrics.robustness_epsilon"),
      num_samples=_posint(mtab.get("num_samples", ms.num_samples), "metrics.num_samples"),
      lipschitz_steps=_posint(mtab.get("lipschitz_steps", ms.lipschitz_steps),
                              "metrics.lipschitz_steps"),
      curve_steps=_posint(mtab.get("curve_steps", ms.curve_steps), "metrics.curve_steps"))
  if not metrics.similarity:
    raise ValueError(f"`metrics.similarity` needs at least one of {list(SIMILARITIES)}.")

  dg = _table(raw, "diagnostics", "diagnostics")
  _unknown(dg, {f.name for f in dataclasses.fields(DiagnosticSpec)}, "diagnostics")
  ds = DiagnosticSpec()
  diagnostics = DiagnosticSpec(
      pgd_epsilon=_number(dg.get("pgd_epsilon", ds.pgd_epsilon), "diagnostics.pgd_epsilon"),
      pgd_steps=_posint(dg.get("pgd_steps", ds.pgd_steps), "diagnostics.pgd_steps"),
      pgd_restarts=_posint(dg.get("pgd_restarts", ds.pgd_restarts), "diagnostics.pgd_restarts"),
      hessian_iters=_posint(dg.get("hessian_iters", ds.hessian_iters),
                            "diagnostics.hessian_iters", minimum=2),
      hutchinson_samples=_posint(dg.get("hutchinson_samples", ds.hutchinson_samples),
                                 "diagnostics.hutchinson_samples"),
      num_examples=_posint(dg.get("num_examples", ds.num_examples), "diagnostics.num_examples"))
  ct = _table(raw, "compute", "compute")
  _unknown(ct, {"onednn"}, "compute")
  onednn = ct.get("onednn", "auto")
  if isinstance(onednn, bool):
    onednn = "on" if onednn else "off"
  _choice(onednn, "compute.onednn", ONEDNN_SETTINGS)
  return StudyConfig(name=name, description=description, model=model,
                     model_settings=model_settings, data=data, seeds=tuple(seeds), epochs=epochs,
                     batch_size=batch_size, learning_rate=lr, methods=methods,
                     explainers=explainers, attacks=attacks, metrics=metrics,
                     diagnostics=diagnostics, baseline_method=baseline, source=source,
                     vectorize_seeds=vectorize, onednn=onednn)


def preset_names() -> tuple[str, ...]:
  files = resources.files("rattr_jax.study").joinpath("presets")
  return tuple(sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml")))


def preset_text(name: str) -> str:
  names = preset_names()
  if name not in names:
    raise ValueError(f"--preset: unknown study {name!r}; expected one of {list(names)}.")
  return resources.files("rattr_jax.study").joinpath("presets", f"{name}.toml").read_text()


def load_config(source: str | None = None, *, preset: str | None = None) -> StudyConfig:
  """Reads a study from a TOML file path or a shipped preset name.

  Raises a one-line ``ValueError`` naming the bad field.
  """
  if (source is None) == (preset is None):
    raise ValueError("Give exactly one of a CONFIG.toml path or `--preset`.")
  if preset is not None:
    text, origin = preset_text(preset), f"preset:{preset}"
  else:
    if not os.path.isfile(source):
      raise ValueError(f"`CONFIG` {source!r} is not a file.")
    with open(source, "rb") as f:
      text, origin = f.read().decode("utf-8", errors="replace"), os.path.abspath(source)
  try:
    raw = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f"`CONFIG` {origin} is not valid TOML: {e}.") from None
  return parse_config(raw, source=origin)
