"""Training terms: one registered, typed description per part of the objective.

A training objective is a tuple of `Term`\\ s. A term is a keyword-only
`flax.struct` dataclass whose fields are its own hyper-parameters, with

* a class-level ``name`` (the registry key, ``--term NAME:...`` on the
  command line and the metric name in logs);
* ``loss(ctx, batch, key) -> (scalar, {name: scalar})``: its value on one
  batch, computed from a `rattr_jax.training.TermContext` inside the traced
  loss (so it is differentiated with respect to the parameters);
* ``weight``: the multiplier of ``loss`` in the total (``1`` unless the term
  names one of its fields in ``weight_field``).

Optional hooks: ``check()`` (value checks beyond the generic ones, which come
from the field annotations: ``float`` finite and >= 0, ``int`` > 0, ``bool``,
``str`` among ``choices[field]``, ``tuple[str, ...]`` non-empty, ``X | None``),
``prepare(setup)`` (resolve settings against the model before tracing) and
``refresh()`` (per-epoch auxiliary data).

Registering a term is one decorator line, `register_term`; the config, the
``rattr train --term`` parser, JSON round trips and resume then know it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from flax import struct

from rattr_jax.training._terms import LossTerm

#: ``name -> Term subclass`` of every registered term (see `register_term`).
TERMS: dict[str, type["Term"]] = {}


@dataclasses.dataclass(frozen=True)
class TermSetup:
  """What `Term.prepare` may inspect before tracing.

  Attributes:
    model: the NNX model being trained.
    x, y: a small example batch (``[2, *F]``, ``[2]``).
    conv_impl: the training passes' convolution implementation (as in
      `rattr_jax.training.make_train_step`).
  """

  model: Any
  x: Any
  y: Any
  conv_impl: str | None = None


class Term(struct.PyTreeNode):
  """Base class of training terms (subclasses are keyword-only struct dataclasses)."""

  #: Registry key, CLI name and metric name.
  name: ClassVar[str] = ""
  #: The field whose value multiplies the term in the total loss (``None``: weight 1).
  weight_field: ClassVar[str | None] = None
  #: Allowed values of ``str`` fields.
  choices: ClassVar[Mapping[str, tuple]] = {}
  #: Other names accepted for fields by `with_params` (e.g. ``{"lam": "lambda_robustness"}``).
  aliases: ClassVar[Mapping[str, str]] = {}

  def __init_subclass__(cls, **kwargs):
    kwargs.setdefault("kw_only", True)
    super().__init_subclass__(**kwargs)

  @property
  def weight(self) -> float:
    return 1.0 if self.weight_field is None else float(getattr(self, self.weight_field))

  def check(self) -> None:
    """Value checks beyond the generic ones (raise ``ValueError`` naming ``<term>.<field>``)."""

  def prepare(self, setup: TermSetup) -> "Term":
    """This term with settings resolved against the model (called once, before tracing)."""
    del setup
    return self

  def loss(self, ctx, batch, key):
    """``(value, metrics)`` on one batch; see the module docstring."""
    raise NotImplementedError(f"Term {self.name!r} does not define `loss`.")

  def clean_layers(self) -> tuple[str, ...]:
    """Hidden layers this term reads from the clean pass (``ctx.features``); default none."""
    return ()

  def refresh(self) -> Callable[..., Any] | None:
    """Optional ``refresh(model, x, y, key) -> pytree``, run each epoch (``ctx.aux[name]``)."""
    return None

  def loss_term(self, setup: TermSetup | None = None) -> LossTerm:
    """The engine's `LossTerm` of this term (validated; prepared when ``setup`` is given)."""
    check_term(self)
    t = self if setup is None else self.prepare(setup)
    return LossTerm(t.name, t.loss, t.weight, t.refresh(), tuple(t.clean_layers()))

  def to_dict(self) -> dict[str, Any]:
    """``{"term": name, field: value, ...}`` (JSON-serialisable)."""
    out: dict[str, Any] = {"term": self.name}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def register_term(cls: type[Term]) -> type[Term]:
  """Class decorator: makes a `Term` subclass known by its ``name``.

  Example:
    >>> from flax import struct
    >>> import jax.numpy as jnp
    >>> @register_term
    ... class LogitSquare(Term):
    ...   name = "doc_logit_square"
    ...   weight_field = "lam"
    ...   lam: float = 1e-3
    ...   def loss(self, ctx, batch, key):
    ...     return jnp.mean(ctx.logits ** 2), {}
    >>> make_term("doc_logit_square", lam=0.5).weight
    0.5
  """
  if not (isinstance(cls, type) and issubclass(cls, Term)):
    raise TypeError(f"register_term expects a Term subclass; got {cls!r}.")
  name = cls.name
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"A term's `name` must be an identifier; got {name!r}.")
  old = TERMS.get(name)
  if old is not None and old is not cls and (old.__module__, old.__qualname__) != (
      cls.__module__, cls.__qualname__):
    raise ValueError(f"A term named {name!r} is already registered ({old.__qualname__}).")
  TERMS[name] = cls
  return cls


def _term_class(name: str) -> type[Term]:
  if name not in TERMS:
    raise ValueError(f"Unknown term {name!r}; valid terms: {', '.join(sorted(TERMS))}.")
  return TERMS[name]


def fields_of(name_or_cls) -> dict[str, Any]:
  """``{field: resolved type}`` of a term (by name or class)."""
  cls = _term_class(name_or_cls) if isinstance(name_or_cls, str) else name_or_cls
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def make_term(name: str, **params) -> Term:
  """The registered term ``name`` with ``params`` (unknown names/fields: one-line errors)."""
  cls = _term_class(name)
  known = fields_of(cls)
  for k in params:
    if k not in known:
      raise ValueError(f"Term {name!r} has no field {k!r}; valid fields: "
                       f"{', '.join(known) or '(none)'}.")
  term = cls(**{k: _coerce(v) for k, v in params.items()})
  check_term(term)
  return term


def term_from_dict(d: Mapping[str, Any]) -> Term:
  """Inverse of `Term.to_dict`."""
  d = dict(d)
  if "term" not in d:
    raise ValueError(f"A term entry needs a 'term' name; got {d!r}.")
  return make_term(d.pop("term"), **d)


def _is_optional(tp) -> tuple[bool, Any]:
  args = typing.get_args(tp)
  if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
    rest = [a for a in args if a is not type(None)]
    return True, rest[0] if len(rest) == 1 else tp
  return False, tp


def check_term(term: Term) -> Term:
  """Generic checks from the field annotations, then ``term.check()``."""
  if not isinstance(term, Term):
    raise ValueError(f"Expected a training Term; got {term!r}.")
  for field, tp in fields_of(type(term)).items():
    value = getattr(term, field)
    label = f"`{term.name}.{field}`"
    optional, tp = _is_optional(tp)
    if value is None:
      if optional or tp in (object, Any):
        continue
      raise ValueError(f"{label} must not be None.")
    if tp is float:
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not (math.isfinite(value) and value >= 0)):
        raise ValueError(f"{label} must be a finite non-negative number; got {value!r}.")
    elif tp is int:
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{label} must be a positive int; got {value!r}.")
    elif tp is bool:
      if not isinstance(value, bool):
        raise ValueError(f"{label} must be True or False; got {value!r}.")
    elif tp is str:
      if not isinstance(value, str):
        raise ValueError(f"{label} must be a string; got {value!r}.")
      if field in term.choices and value not in term.choices[field]:
        raise ValueError(f"Unknown {label} {value!r}; expected one of "
                         f"{list(term.choices[field])}.")
    elif _is_range(tp):
      if (not isinstance(value, tuple) or len(value) != 2
          or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                     and math.isfinite(v) for v in value) or not value[0] < value[1]):
        raise ValueError(f"{label} must be a box (lo, hi) of finite numbers with lo < hi, or "
                         f"None; got {value!r}.")
    elif typing.get_origin(tp) is tuple:
      if (not isinstance(value, tuple) or not value
          or not all(isinstance(s, str) for s in value)):
        raise ValueError(f"{label} must be a non-empty tuple of names; got {value!r}.")
  term.check()
  return term


def _is_range(tp) -> bool:
  """``tp`` is ``tuple[float, float]`` (an ``input_range`` box)."""
  return typing.get_origin(tp) is tuple and typing.get_args(tp) == (float, float)


def check_radius(term: Term, field: str) -> None:
  """A radius in input units is at most the width of the term's ``input_range``
  (``[0, 1]`` for terms without one; no bound when it is ``None``)."""
  v = getattr(term, field)
  box = getattr(term, "input_range", (0.0, 1.0))
  if v is None or box is None:
    return
  width = box[1] - box[0]
  if v > width:
    raise ValueError(f"`{term.name}.{field}` is a radius in input units (inputs lie in "
                     f"[{box[0]:g}, {box[1]:g}]) and must be <= {width:g}; got {v!r}.")


# --------------------------------------------------------------------------- params, CLI


def with_params(terms, **params) -> tuple[Term, ...]:
  """``terms`` with each hyper-parameter set on every term that has that field.

  A term's ``aliases`` are honoured (e.g. ``sensitivity_perturbation`` is
  `ActivationSensitivity`'s ``perturbation``). A parameter no term takes is an
  error listing the objective's fields.
  """
  terms = tuple(terms)
  changes: list[dict[str, Any]] = [{} for _ in terms]
  for k, v in params.items():
    used = False
    for i, t in enumerate(terms):
      field = t.aliases.get(k, k)
      if field in fields_of(type(t)):
        changes[i][field] = _coerce(v)
        used = True
    if not used:
      valid = sorted({f for t in terms for f in fields_of(type(t))}
                     | {a for t in terms for a in t.aliases})
      raise ValueError(f"`{k}` is not a hyper-parameter of the objective "
                       f"({', '.join(t.name for t in terms)}); valid: "
                       f"{', '.join(valid) or '(none)'}.")
  out = tuple(t.replace(**c) if c else t for t, c in zip(terms, changes))
  for t in out:
    check_term(t)
  return out


def _parse_value(text: str, tp, label: str) -> Any:
  optional, tp = _is_optional(tp)
  t = text.strip()
  if optional and t.lower() == "none":
    return None
  if tp is float:
    try:
      if "/" in t:
        num, _, den = t.partition("/")
        return float(num) / float(den)
      return float(t)
    except (ValueError, ZeroDivisionError):
      raise ValueError(f"{label} expects a number or a fraction like 8/255; got {text!r}.") \
          from None
  if tp is int:
    try:
      return int(t)
    except ValueError:
      raise ValueError(f"{label} expects an integer; got {text!r}.") from None
  if tp is bool:
    if t.lower() in ("1", "true", "yes"):
      return True
    if t.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"{label} expects true or false; got {text!r}.")
  if _is_range(tp):
    lo, sep, hi = t.partition(":")
    if not sep:
      raise ValueError(f"{label} expects a box lo:hi (e.g. 0:1) or none; got {text!r}.")
    return (_parse_value(lo, float, label), _parse_value(hi, float, label))
  if typing.get_origin(tp) is tuple:
    return tuple(s for s in t.split("+") if s)
  if tp is str:
    return t
  raise ValueError(f"{label} cannot be set from the command line (pass the term to "
                   "`rattr_jax.training.train` in Python).")


def parse_term(text: str) -> tuple[str, dict[str, Any]]:
  """``"name:field=value,field=value"`` -> ``(name, {field: typed value})``.

  Values are typed from the term's field annotations: numbers accept
  fractions (``8/255``), booleans ``true``/``false``, optional fields
  ``none``, name tuples ``a+b``, boxes ``lo:hi`` (``input_range=-1:1``).

  Example:
    >>> parse_term("gradient_alignment:epsilon=4/255,lambda_cos=1")[1]["lambda_cos"]
    1.0
  """
  name, _, rest = text.strip().partition(":")
  cls = _term_class(name.strip())
  known = fields_of(cls)
  params: dict[str, Any] = {}
  for part in filter(None, (p.strip() for p in rest.split(","))):
    field, eq, value = part.partition("=")
    field = field.strip()
    if not eq:
      raise ValueError(f"Term {cls.name!r}: expected field=value; got {part!r}.")
    if field not in known:
      raise ValueError(f"Term {cls.name!r} has no field {field!r}; valid fields: "
                       f"{', '.join(known) or '(none)'}.")
    params[field] = _parse_value(value, known[field], f"`{cls.name}.{field}`")
  return cls.name, params


def merge_terms(terms, name: str, params: Mapping[str, Any]) -> tuple[Term, ...]:
  """``terms`` with term ``name`` updated by ``params``, or appended (defaults + ``params``)."""
  terms = tuple(terms)
  for i, t in enumerate(terms):
    if t.name == name:
      new = check_term(t.replace(**{k: _coerce(v) for k, v in params.items()}))
      return terms[:i] + (new,) + terms[i + 1:]
  return terms + (make_term(name, **params),)
