"""The threat model: a radius, a norm and a valid input box, with one projection.

Every attack, the perturbation metrics and the adversarial regularizers project
through `ThreatModel.project`; there is no other project-and-clip in rattr_jax.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rattr_jax import _random
from rattr_jax import _validation as V

NORMS = ("linf", "l2")


@struct.dataclass
class ThreatModel:
  """The set ``{x' : ||x' - x|| <= epsilon, lo <= x' <= hi}`` around an input ``x``.

  Attributes:
    epsilon: radius in **input units** (traced: a sweep over it does not
      recompile). For ``norm="linf"`` it may be per-channel / per-feature
      (broadcastable to one example), e.g. ``eps / std_c`` for inputs
      normalised per channel. ``inf`` means no ball (only the box).
    norm: ``"linf"`` or ``"l2"`` (static). The L2 norm is taken over all
      features of one example.
    input_range: the valid input box ``(lo, hi)``, or ``None`` for none
      (static).

  Example:
    >>> import jax.numpy as jnp
    >>> from rattr_jax.core import ThreatModel
    >>> tm = ThreatModel(epsilon=0.1, input_range=(0.0, 1.0))
    >>> x = jnp.array([[0.05, 0.5]])
    >>> tm.project(jnp.array([[-1.0, 2.0]]), x).tolist()
    [[0.0, 0.6000000238418579]]
  """

  epsilon: Any
  norm: str = struct.field(pytree_node=False, default="linf")
  input_range: Optional[Tuple[float, float]] = struct.field(pytree_node=False, default=None)

  def project(self, x_adv: jax.Array, x: jax.Array) -> jax.Array:
    """Projects ``x_adv [B, *F]`` onto the ball around the ORIGINAL ``x``, then the box.

    ``linf``: ``x + clip(x_adv - x, -eps, eps)``; ``l2``: the difference is
    rescaled per example to norm at most ``eps``. Then ``clip(., lo, hi)``.
    Since ``x`` lies in the box, the result lies in both sets (exactly for
    ``linf``, Ghorbani et al.'s Algorithm 1).
    """
    eps = jnp.asarray(self.epsilon, x.dtype)
    d = x_adv - x
    if self.norm == "linf":
      d = jnp.clip(d, -eps, eps)
    else:
      flat = d.reshape(d.shape[0], -1)
      s = jnp.sum(flat * flat, axis=1)
      pos = s > 0
      n = jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)
      scale = jnp.minimum(1.0, eps / jnp.maximum(n, 1e-30))
      d = d * scale.reshape((-1,) + (1,) * (d.ndim - 1))
    out = x + d
    return self.clip(out)

  def clip(self, z: jax.Array) -> jax.Array:
    """``z`` clipped to the valid box (identity without ``input_range``)."""
    if self.input_range is None:
      return z
    return jnp.clip(z, self.input_range[0], self.input_range[1])

  def sample_delta(self, key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """A uniform random offset in the ball, ``[B, *F]`` (one per example; no box)."""
    eps = jnp.asarray(self.epsilon, dtype)
    if self.norm == "linf":
      return eps * _random.uniform(key, shape, dtype, -1.0, 1.0)
    k1, k2 = jax.random.split(key)
    n = math.prod(shape[1:])
    g = jax.random.normal(k1, (shape[0], n), dtype)
    r = jax.random.uniform(k2, (shape[0], 1), dtype) ** (1.0 / n)
    return (eps * r * g / jnp.linalg.norm(g, axis=1, keepdims=True)).reshape(shape)

  def sample(self, key: jax.Array, x: jax.Array) -> jax.Array:
    """A uniform random point of the ball around ``x`` (per example), clipped to the box."""
    return self.clip(x + self.sample_delta(key, x.shape, x.dtype))

  def check(self, x: Any = None, *, allow_inf: bool = False) -> "ThreatModel":
    """Validates the fields (and that a concrete ``x`` lies in the box); returns ``self``.

    Raises:
      ValueError: a negative / NaN epsilon (``inf`` unless ``allow_inf``), an
        unknown norm, a per-feature epsilon with ``norm="l2"``, a bad box or an
        ``x`` outside it.
    """
    V.check_choice(self.norm, NORMS, name="norm")
    check_epsilon(self.epsilon, allow_inf=allow_inf, scalar=self.norm == "l2")
    rng = check_input_range(self.input_range, x)
    if rng != self.input_range:
      return self.replace(input_range=rng)
    return self


def check_epsilon(epsilon: Any, *, allow_inf: bool = False, scalar: bool = True,
                  name: str = "epsilon") -> None:
  """``epsilon >= 0`` when concrete; ``inf`` only where there may be no ball."""
  if V.is_concrete(epsilon):
    arr = np.asarray(epsilon, dtype=np.float64)
    if scalar and arr.ndim != 0:
      raise ValueError(f"`{name}` must be a scalar; got shape {arr.shape}.")
    if np.any(np.isnan(arr)) or (np.any(np.isinf(arr)) and not allow_inf):
      raise ValueError(f"`{name}` must be finite; got {epsilon!r}.")
    if np.any(arr < 0):
      raise ValueError(f"`{name}` must be non-negative; got {epsilon!r}.")


def check_input_range(input_range: Any, x: Any = None, *,
                      name: str = "input_range") -> tuple[float, float] | None:
  """Checks ``(lo, hi)`` with ``lo < hi`` (finite) and, if given and concrete, that ``x`` lies in it."""
  if input_range is None:
    return None
  try:
    lo, hi = (float(v) for v in input_range)
  except (TypeError, ValueError):
    raise ValueError(f"`{name}` must be a pair (lo, hi) or None; got {input_range!r}.") from None
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise ValueError(f"`{name}` must be finite with lo < hi; got {input_range!r}.")
  if x is not None and V.is_concrete(x):
    arr = np.asarray(x)
    if arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6:
      raise ValueError(
          f"`x` must lie inside `{name}` {(lo, hi)}; got values in "
          f"[{arr.min():.4g}, {arr.max():.4g}]. Set `{name}` to your data's range.")
  return (lo, hi)
