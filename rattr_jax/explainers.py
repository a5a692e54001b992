"""Explainers by name: one protocol for every attribution method.

An *explainer* is ``explainer(fn, x, target, *, key) -> attribution`` shaped
like ``x`` (see `Explainer`). Every method of `rattr_jax.attribution` is one;
deterministic methods ignore ``key``. Attacks, metrics and regularizers take an
explainer in the same position, right after the model ``fn``::

    from rattr_jax import attacks, explainers, metrics
    ig = explainers.get("integrated_gradients", num_steps=32)
    attacks.topk_attack(fn, ig, x, y, key=key)
    metrics.max_sensitivity(fn, ig, x, y, key=key)

`get` binds settings once into a hashable explainer (a `BoundExplainer`; array
settings such as a baseline are pytree leaves), so passing it to a compiled
function twice reuses the compiled program. `precomputed` turns saved maps
into an explainer that metrics can score.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from rattr_jax import explainers
  >>> fn = lambda x: x @ jnp.array([[1.0, -1.0], [2.0, 0.0]])
  >>> explainers.get("gradient")(fn, jnp.ones((1, 2)), 0, key=None).tolist()
  [[1.0, 2.0]]
  >>> explainers.get("gradient") == explainers.get("gradient")
  True
"""

from __future__ import annotations

import inspect
from typing import Any

from rattr_jax import attribution as _attribution
from rattr_jax.core import BoundExplainer
from rattr_jax.core import Explainer
from rattr_jax.core import Precomputed
from rattr_jax.core import precomputed

_METHODS = {
    "gradient": _attribution.gradient,
    "input_x_gradient": _attribution.input_x_gradient,
    "integrated_gradients": _attribution.integrated_gradients,
    "smoothgrad": _attribution.smoothgrad,
    "vargrad": _attribution.vargrad,
    "decoy": _attribution.decoy_attribution,
}

#: The names `get` accepts.
NAMES: tuple[str, ...] = tuple(_METHODS)

#: Which explainers draw random numbers from ``key`` (the others ignore it).
STOCHASTIC: frozenset[str] = frozenset({"smoothgrad", "vargrad", "decoy"})


def get(name: str, **settings: Any) -> BoundExplainer:
  """The explainer ``name`` with ``settings`` bound (keyword options of the method).

  Args:
    name: one of `NAMES`: ``gradient``, ``input_x_gradient``,
      ``integrated_gradients``, ``smoothgrad``, ``vargrad``, ``decoy``.
    **settings: the method's keyword options, e.g. ``num_steps=32,
      chunk_size=8`` for integrated gradients or ``num_samples=20,
      stddev=0.1`` for SmoothGrad. ``decoy`` (DANCE,
      `rattr_jax.attribution.decoy_attribution`) needs ``layer`` (a features
      function, or a layer name with ``model=``; a name is resolved once
      here) and accepts the options of `rattr_jax.attribution.decoy_saliency`.

  Returns:
    A `BoundExplainer` ``e(fn, x, target, *, key)``; equal settings give equal
    (and equally hashing) explainers.

  Raises:
    ValueError: an unknown ``name`` (the message lists `NAMES`), or a setting
      the method does not have.
  """
  if name not in _METHODS:
    raise ValueError(f"Unknown explainer {name!r}; expected one of {list(NAMES)}.")
  for bad in ("fn", "x", "target", "key"):
    if bad in settings:
      raise ValueError(f"`{bad}` is passed when the explainer is called, not bound by "
                       f"get({name!r}, ...).")
  if name == "decoy":
    from rattr_jax.attribution import decoy_layer
    settings = dict(settings)
    settings["layer"] = decoy_layer(settings.pop("layer", None), settings.pop("model", None))
  params = inspect.signature(_METHODS[name]).parameters
  if name == "decoy":
    params = {**params, **inspect.signature(_attribution.decoy_saliency).parameters}
  unknown = sorted(set(settings) - set(params))
  if unknown:
    valid = sorted(p for p in params if p not in ("fn", "x", "target", "key", "options",
                                                  "decoys", "model"))
    raise ValueError(f"Unknown setting(s) {unknown} for explainer {name!r}; expected some of "
                     f"{valid}.")
  return BoundExplainer(name, _METHODS[name], settings)


__all__ = ["Explainer", "BoundExplainer", "Precomputed", "get", "precomputed", "NAMES",
           "STOCHASTIC"]
