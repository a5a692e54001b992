"""Multi-controller setup: `initialize`, process slices, global arrays, gathers.

JAX runs one Python process per host (or per group of local devices); every
process runs the same program on its own part of a global array. This module
wraps the few `jax.distributed` / `jax.experimental.multihost_utils` calls the
rest of rattr_jax needs, and avoids two traps measured with jax 0.10.2 on CPU:

* ``jax.device_put(<jax array>, NamedSharding(mesh, P()))`` in a
  multi-process run returns an array whose ``addressable_shards`` fails (orbax
  cannot save it). `replicate` puts host (numpy) values instead.
* ``--xla_force_host_platform_device_count`` is not how a CPU process gets
  several devices; set ``JAX_NUM_CPU_DEVICES`` (`rattr launch` does).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

#: Environment variables read by `initialize` (set by `rattr launch`).
#: ``JAX_COORDINATOR_ADDRESS`` is JAX's own.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RATTR_NUM_PROCESSES"
ENV_PROCESS_ID = "RATTR_PROCESS_ID"
ENV_HEARTBEAT = "RATTR_HEARTBEAT_TIMEOUT"

#: Environment variables of cluster managers whose layout JAX detects itself
#: (`jax.distributed.initialize()` without arguments).
_CLUSTER_VARS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS")


def _env_int(name: str) -> int | None:
  v = os.environ.get(name)
  if v in (None, ""):
    return None
  try:
    return int(v)
  except ValueError:
    raise ValueError(f"`{name}` must be an integer; got {v!r}.") from None


def _cluster_detected() -> bool:
  if os.environ.get("SLURM_JOB_ID") and (_env_int("SLURM_NTASKS") or 1) <= 1:
    return False
  if (_env_int("OMPI_COMM_WORLD_SIZE") or 2) <= 1:
    return False
  return any(os.environ.get(v) for v in _CLUSTER_VARS)


def initialize(*, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout: int | None = None,
               initialization_timeout: int = 300) -> bool:
  """Starts JAX's multi-controller runtime if this run has several processes.

  Call it first, before any JAX computation. Settings come from the
  arguments, else from the environment (``JAX_COORDINATOR_ADDRESS``,
  ``RATTR_NUM_PROCESSES``, ``RATTR_PROCESS_ID``, ``RATTR_HEARTBEAT_TIMEOUT``;
  `rattr launch` sets them), else from a cluster manager that JAX detects by
  itself (Slurm, Open MPI, Cloud TPU). With none of these, or
  ``num_processes == 1``, it does nothing: a single process needs no runtime.

  Args:
    coordinator: ``"host:port"`` of process 0's coordinator service.
    num_processes: number of processes.
    process_id: this process's id in ``0 .. num_processes - 1``.
    heartbeat_timeout: seconds after which the runtime declares a silent
      process dead and stops the others with an error (JAX's default: 100).
    initialization_timeout: seconds to wait for every process to connect.

  Returns:
    ``True`` if the runtime was started (now or earlier), ``False`` for a
    single-process run.
  """
  if _initialized():
    return True
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  heartbeat_timeout = (heartbeat_timeout if heartbeat_timeout is not None
                       else _env_int(ENV_HEARTBEAT))
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"`num_processes` must be >= 1; got {num_processes}.")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"`process_id` must be in [0, {num_processes}); got {process_id}.")
  if heartbeat_timeout is not None and heartbeat_timeout < 1:
    raise ValueError(f"`heartbeat_timeout` must be >= 1 second; got {heartbeat_timeout}.")
  kwargs: dict[str, Any] = {"initialization_timeout": int(initialization_timeout)}
  if heartbeat_timeout is not None:
    kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout)
  given = (coordinator, num_processes, process_id)
  if num_processes == 1:
    return False
  if all(v is None for v in given):
    if not _cluster_detected():
      return False
    jax.distributed.initialize(**kwargs)
    return True
  if None in given:
    missing = [n for n, v in zip(("coordinator", "num_processes", "process_id"), given) if v is None]
    raise ValueError(f"Multi-process runs need `coordinator`, `num_processes` and `process_id`; "
                     f"missing {missing} (flags or {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/"
                     f"{ENV_PROCESS_ID}).")
  jax.distributed.initialize(coordinator, num_processes=int(num_processes),
                             process_id=int(process_id), **kwargs)
  return True


def add_cli_args(parser) -> None:
  """Adds ``--coordinator``, ``--num-processes``, ``--process-id`` to an argparse parser."""
  g = parser.add_argument_group("multi-host (default: environment, or one process)")
  g.add_argument("--coordinator", default=None,
                 help="host:port of process 0's coordinator (multi-process runs)")
  g.add_argument("--num-processes", dest="num_processes", type=int, default=None,
                 help="number of processes of the job")
  g.add_argument("--process-id", dest="process_id", type=int, default=None,
                 help="this process's id, 0 .. num-processes - 1")


def initialize_from_args(args) -> bool:
  """`initialize` from parsed `add_cli_args` flags (missing ones come from the environment)."""
  return initialize(coordinator=getattr(args, "coordinator", None),
                    num_processes=getattr(args, "num_processes", None),
                    process_id=getattr(args, "process_id", None))


def _initialized() -> bool:
  return jax.distributed.is_initialized()


def is_main_process() -> bool:
  """``True`` in process 0 (the one that writes files and prints summaries)."""
  return jax.process_index() == 0


def process_slice(n: int, *, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
  """This process's contiguous share of ``n`` examples.

  Process ``p`` of ``P`` gets ``[p * m, min((p + 1) * m, n))`` with
  ``m = ceil(n / P)``, so the slices tile ``0 .. n-1`` in order (the last one
  may be shorter or empty; `shard_batch` pads). Load only these rows.
  """
  if n < 0:
    raise ValueError(f"`n` must be >= 0; got {n}.")
  p = jax.process_index() if process_index is None else int(process_index)
  c = jax.process_count() if process_count is None else int(process_count)
  m = -(-n // c)
  return slice(min(p * m, n), min((p + 1) * m, n))


def local_batch_size(n: int, mesh: Mesh) -> int:
  """Rows each process contributes for ``n`` examples: ``ceil(n / P)`` rounded up to its device count."""
  c = jax.process_count()
  local_devices = mesh.devices.size // c
  m = -(-n // c)
  return -(-m // local_devices) * local_devices


def shard_batch(local_x: Any, mesh: Mesh, *, global_size: int | None = None) -> Any:
  """A global array sharded over ``mesh``'s ``"data"`` axis from this process's rows.

  Every leaf of ``local_x`` (a pytree of ``[b_local, ...]`` numpy/JAX
  arrays: this process's `process_slice`) is padded, by repeating its last
  row, to `local_batch_size` rows so that every device holds the same
  number, and assembled with `jax.make_array_from_process_local_data`. The
  global leading dimension is ``P * local_batch_size``; the first
  ``global_size`` rows (in process order) are the real examples only when
  every process but the last has a full slice, which `process_slice`
  guarantees. With one process this is a sharded ``device_put``.

  Args:
    local_x: pytree of this process's examples (same leading size per leaf).
    mesh: a mesh with a ``"data"`` axis (`data_mesh`).
    global_size: total number of real examples ``n`` (default: this
      process's row count times the number of processes).
  """
  leaves = jax.tree_util.tree_leaves(local_x)
  if not leaves:
    raise ValueError("`local_x` has no arrays.")
  b = int(np.shape(leaves[0])[0])
  if any(int(np.shape(l)[0]) != b for l in leaves):
    raise ValueError("`local_x`: every array needs the same leading (batch) size.")
  n = b * jax.process_count() if global_size is None else int(global_size)
  rows = local_batch_size(n, mesh)
  if b > rows:
    raise ValueError(f"`local_x` has {b} rows but this process's share of {n} is at most {rows}.")
  sharding = NamedSharding(mesh, P("data"))

  def one(a):
    a = np.asarray(a)
    if a.shape[0] < rows:
      if a.shape[0] == 0:
        a = np.zeros((rows,) + a.shape[1:], a.dtype)
      else:
        a = np.concatenate([a, np.repeat(a[-1:], rows - a.shape[0], axis=0)])
    return jax.make_array_from_process_local_data(
        sharding, a, (rows * jax.process_count(),) + a.shape[1:])

  return jax.tree_util.tree_map(one, local_x)


def global_array(global_shape, sharding, fetch) -> jax.Array:
  """A global array laid out by ``sharding``, each process supplying only its own part.

  ``fetch(index)`` returns the values of the global array at ``index`` (a tuple
  of slices, one per dimension) from this process's data; it is never asked
  for rows that other processes' devices hold. When this process's shards
  form one block (a 1-D ``"data"`` mesh whose devices are in process order,
  as `data_mesh` builds it) ``fetch`` is called once for that block and the
  array is assembled with `jax.make_array_from_process_local_data`; otherwise
  once per shard (`jax.make_array_from_callback`). With one process it is a
  `jax.device_put` of ``fetch(everything)``.

  Example: each process contributes its columns of a ``[k, B]`` stack of
  batches drawn from a host array ``x``::

    sh = NamedSharding(mesh, P(None, "data"))
    xb = global_array((k, B) + x.shape[1:], sh, lambda i: x[idx[i[0], i[1]]])
  """
  shape = tuple(int(d) for d in global_shape)
  if sharding.is_fully_addressable:
    return jax.device_put(np.asarray(fetch(tuple(slice(0, d) for d in shape))), sharding)
  shards = {tuple((i.start or 0, d if i.stop is None else i.stop) for i, d in zip(ix, shape))
            for ix in sharding.addressable_devices_indices_map(shape).values()}
  block, count = [], 1
  for ax, d in enumerate(shape):
    spans = sorted({s[ax] for s in shards})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
      block = None
      break
    block.append(slice(lo, hi))
    count *= len(spans)
  if block is None or count != len(shards):
    return jax.make_array_from_callback(shape, sharding, lambda ix: np.asarray(fetch(
        tuple(slice(i.start or 0, d if i.stop is None else i.stop) for i, d in zip(ix, shape)))))
  return jax.make_array_from_process_local_data(sharding, np.asarray(fetch(tuple(block))), shape)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` replicated on every device of ``mesh`` (each process passes the same values).

  Leaves are copied to host numpy first and then placed, never
  ``device_put`` as JAX arrays (that yields arrays orbax cannot save in a
  multi-process run). Non-array leaves are returned unchanged.
  """
  sharding = NamedSharding(mesh, P())

  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      if a.sharding.is_fully_replicated:
        return a if a.sharding == sharding else _reshard(a, sharding)
      return _reshard(a, sharding)
    if isinstance(a, (jax.Array, np.ndarray, np.generic)):
      return jax.device_put(np.asarray(a), sharding)
    return a

  return jax.tree_util.tree_map(one, tree)


def _reshard(a: jax.Array, sharding: NamedSharding) -> jax.Array:
  return jax.jit(lambda v: v, out_shardings=sharding)(a)


def gather(x: Any) -> Any:
  """Host numpy copy of a global pytree, identical in every process.

  Sharded leaves are all-gathered across processes
  (`multihost_utils.process_allgather` with ``tiled=True``: the global
  array, not a stack of per-process pieces); fully addressable leaves are
  simply copied to host.
  """
  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a) if isinstance(a, (jax.Array, np.ndarray, np.generic)) else a

  return jax.tree_util.tree_map(one, x)


def sync(name: str = "rattr") -> None:
  """Blocks until every process reaches this point (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def gather_examples(x: Any, n: int, *, num_processes: int | None = None) -> Any:
  """Host numpy ``[n, ...]`` results, in example order, from `shard_batch`-laid-out outputs.

  Undoes `shard_batch`'s padding: the global rows are ``P`` blocks of
  `local_batch_size` rows, block ``p`` starting with `process_slice` ``p``'s
  real examples. Leaves with a leading size other than ``P`` blocks are
  returned as gathered.
  """
  c = jax.process_count() if num_processes is None else int(num_processes)
  full = gather(x)
  m = -(-n // c)

  def one(a):
    if not isinstance(a, np.ndarray) or a.ndim == 0 or a.shape[0] % c:
      return a
    rows = a.shape[0] // c
    if rows < m:
      return a
    parts = [a[p * rows:p * rows + max(0, min(m, n - p * m))] for p in range(c)]
    return np.concatenate(parts)

  return jax.tree_util.tree_map(one, full)
