"""Orbax checkpoints of a `TrainState` plus JSON metadata (no pickle).

Layout under ``out_dir``::

  checkpoints/latest/<step>/{state, meta}   the last completed epoch (resume)
  checkpoints/best/<step>/{state, meta}     the best validation accuracy so far

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a crash or a NaN stop never leaves a half-written "latest".
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _manager(path: str, max_to_keep: int) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                      create=True)
  return ocp.CheckpointManager(os.path.abspath(path), options=opts,
                               item_names=("state", "meta"))


class Checkpointer:
  """Saves and restores the latest and the best-validation training state."""

  def __init__(self, out_dir: str):
    self.root = os.path.join(os.path.abspath(out_dir), "checkpoints")
    self.latest = _manager(os.path.join(self.root, "latest"), 1)
    self.best = _manager(os.path.join(self.root, "best"), 1)

  @staticmethod
  def _host(state):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(state))

  def save(self, state, meta: dict[str, Any], *, best: bool = False) -> None:
    step = int(jax.device_get(state.step))
    host = self._host(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
    self.latest.save(step, args=args, force=True)
    self.latest.wait_until_finished()
    if best:
      self.best.save(step, args=args, force=True)
      self.best.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore(self, template, *, which: str = "latest"):
    """Returns ``(state, meta)`` restored onto ``template``'s structure, or ``None``."""
    mgr = self.latest if which == "latest" else self.best
    step = mgr.latest_step()
    if step is None:
      return None
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) if not hasattr(
            a, "sharding") else jax.ShapeDtypeStruct(a.shape, a.dtype), template)
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def close(self) -> None:
    self.latest.close()
    self.best.close()
