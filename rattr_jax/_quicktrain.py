"""Quick training for small classifiers (CLI demos, tests, notebooks).

`fit` is `rattr_jax.training.fit`: the robust-training engine's compiled
steps (cross-entropy and Adam by default), one `lax.scan` per epoch, without
checkpoints or evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rattr_jax.training import fit

__all__ = ["accuracy", "fit"]


def accuracy(fn: Callable, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
  """Top-1 accuracy of ``fn`` on ``(x, y)``, evaluated in chunks."""
  jfn = jax.jit(fn)
  correct = 0
  for i in range(0, len(x), batch_size):
    correct += int(jnp.sum(jnp.argmax(jfn(jnp.asarray(x[i:i + batch_size])), -1)
                           == jnp.asarray(y[i:i + batch_size])))
  return correct / len(x)
