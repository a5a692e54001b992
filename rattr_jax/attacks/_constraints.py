"""Constraint sets of the attacks: the threat model (ball and valid range) and the label.

The projection is `rattr_jax.core.ThreatModel.project` (one implementation for
attacks, metrics and regularizers); this module keeps the attack-specific checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rattr_jax import core
from rattr_jax.core import check_epsilon, check_input_range, predicted_label  # noqa: F401


def check_positive_scalar(value: Any, *, name: str) -> None:
  if core.is_concrete(value):
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 0:
      raise ValueError(f"`{name}` must be a scalar; got shape {arr.shape}.")
    if not np.isfinite(arr) or arr <= 0:
      raise ValueError(f"`{name}` must be positive and finite; got {value!r}.")
