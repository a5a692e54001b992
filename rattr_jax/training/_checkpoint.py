"""Orbax checkpoints of a `TrainState` plus JSON metadata (no pickle).

Layout under ``out_dir``::

  checkpoints/latest/<step>/{state, meta}   the last completed epoch (resume)
  checkpoints/best/<step>/{state, meta}     the best validation accuracy so far

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a crash or a NaN stop never leaves a half-written "latest".

Multi-host (`rattr_jax.distributed`): every process calls `save` and
`restore` with the same directory (a shared file system). A state living on a
multi-process mesh is handed to orbax as global arrays, so orbax writes it
multi-host (each shard once, from the process that owns it; replicated arrays
from the primary process) and restores it onto the template's shardings.
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
    leaves = jax.tree_util.tree_leaves(state)
    if any(isinstance(a, jax.Array) and not a.is_fully_addressable for a in leaves):
      return state  # global arrays: orbax saves them multi-host
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
    # Restore onto the template's shardings (host values onto this process's
    # first device), so a checkpoint written by another topology (e.g. a
    # multi-host mesh) restores here, and a multi-host one restores sharded.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def spec(a):
      if isinstance(a, jax.Array):
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
      return jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype, sharding=local)
    abstract = jax.tree_util.tree_map(spec, template)
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def close(self) -> None:
    self.latest.close()
    self.best.close()
