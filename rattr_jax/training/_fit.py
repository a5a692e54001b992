"""`fit`: the training engine without files, evaluation or progress bars (quick training).

The CLI demos, `rattr_jax.testing`, notebooks and benchmarks train small
classifiers with it; it runs the same compiled steps as `train`
(`make_train_step`), one fused `lax.scan` call per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rattr_jax.training._engine import make_train_step
from rattr_jax.training._term import Term, TermSetup
from rattr_jax.training._terms import LossTerm
from rattr_jax.training.terms import CrossEntropy


def fit(model: nnx.Module, x: np.ndarray, y: np.ndarray, *,
        terms: Sequence[Term | LossTerm] | None = None, epochs: int = 1, batch_size: int = 64,
        learning_rate: float = 1e-3, optimizer: optax.GradientTransformation | None = None,
        seed: int = 0, progress: Callable[[int, float], None] | None = None,
        on_epoch: Callable[[int, dict[str, np.ndarray], Callable[[], nnx.Module]], None]
        | None = None,
        stop_on_nan: bool = False) -> nnx.Module:
  """Trains a copy of ``model`` on ``(x, y)`` and returns it (inference mode).

  Args:
    model: an NNX classifier ``[B, *F] -> [B, C]`` (not modified).
    x, y: training arrays.
    terms: the objective (default: cross-entropy), as in `TrainConfig.terms`.
    epochs: passes over the data.
    batch_size: minibatch size (the remainder of each epoch is dropped).
    learning_rate: Adam learning rate (ignored when ``optimizer`` is given).
    optimizer: an optax transformation instead of Adam.
    seed: shuffling seed (epoch ``e`` uses the ``e``-th permutation of
      ``np.random.default_rng(seed)``) and the seed of the terms' randomness.
    progress: optional callback ``progress(epoch, mean_loss)``; a non-finite
      step is not applied, and its epoch's mean loss is not finite.
    on_epoch: optional callback ``on_epoch(epoch, metrics, model)`` after each
      epoch: ``metrics`` maps each logged name (``loss``, ``acc``, ``finite``
      and every term's own, e.g. ``senn_ce``) to its ``[steps]`` per-step
      values (numpy), and ``model()`` returns the model trained so far.
    stop_on_nan: raise ``FloatingPointError`` (naming the epoch and step) at
      the end of an epoch with a non-finite step, instead of going on.

  Example:
    >>> import numpy as np
    >>> from rattr_jax import models
    >>> x = np.random.default_rng(0).uniform(size=(64, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0.5).astype(np.int32)
    >>> m = fit(models.create_model("mlp", input_shape=(4,), num_classes=2, hidden=(8,)),
    ...         x, y, epochs=2, batch_size=16)
    >>> models.as_fn(m)(x[:3]).shape
    (3, 2)
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not (
      1 <= batch_size <= len(x)):
    raise ValueError(f"`batch_size` must be an int in [1, {len(x)}]; got {batch_size!r}.")
  if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
    raise ValueError(f"`epochs` must be a non-negative int; got {epochs!r}.")
  terms = (CrossEntropy(),) if terms is None else tuple(terms)
  setup = TermSetup(model=model, x=np.asarray(x[:2]), y=np.asarray(y[:2]))
  loss_terms = [t.loss_term(setup) if isinstance(t, Term) else t for t in terms]
  if any(t.refresh is not None for t in loss_terms):
    raise ValueError("`fit` does not run per-epoch refreshes; use `rattr_jax.training.train`.")
  tx = optax.adam(learning_rate) if optimizer is None else optimizer
  ts = make_train_step(model, tx, loss_terms, seed=seed)
  state = ts.init(seed)
  x_dev, y_dev = jnp.asarray(x), jnp.asarray(y, jnp.int32)
  steps = len(x) // batch_size
  rng = np.random.default_rng(seed)
  for e in range(epochs):
    idx = rng.permutation(len(x))[:steps * batch_size].reshape(steps, batch_size)
    state, met = ts.run(state, x_dev, y_dev, jnp.asarray(idx, jnp.int32))
    if stop_on_nan or on_epoch is not None:
      met = jax.device_get(met)
    if stop_on_nan:
      ok = np.asarray(met["finite"], bool)
      if not ok.all():
        bad = int(np.argmin(ok))
        raise FloatingPointError(f"training diverged: loss {float(met['loss'][bad])} at epoch "
                                 f"{e}, step {bad} (the step was not applied).")
    if progress is not None:
      progress(e, float(np.mean(met["loss"])))
    if on_epoch is not None:
      on_epoch(e, met, lambda state=state: ts.model_of(state))
  out = ts.model_of(state)
  nnx.update(out, jax.tree_util.tree_map(jnp.asarray, nnx.state(out)))  # device arrays
  return out
