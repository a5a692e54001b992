"""Data parallelism over devices and hosts on JAX's multi-controller runtime.

* `initialize()`: starts `jax.distributed` from arguments, the environment
  (`rattr launch`) or a cluster manager; a no-op for one process.
* `data_mesh()`: a 1-D ``"data"`` mesh over every device of every process.
* `per_example(f, mesh)`: any per-example method (attribution, attack,
  metric, curvature, decoys) jitted with its batch sharded over the mesh and
  its weights replicated; results equal single-device per example.
* `process_slice(n)`, `shard_batch(local_x, mesh)`: each process loads only
  its rows and contributes them to one global array.
* `global_array(shape, sharding, fetch)`: a global array built from the
  part each process holds (e.g. its columns of a stack of training batches).
* `replicate(tree, mesh)`, `gather(x)`, `gather_examples(x, n)`,
  `is_main_process()`, `sync()`.
* `launch(command, num_processes=N)`: N local processes of one job (what
  ``rattr launch`` runs); `join_job()` makes a launched process a member of
  its job (the ``rattr`` command line calls it first).

Example (run the same script in every process, e.g. ``rattr launch -n 2 -- ...``)::

  from rattr_jax import distributed as dist
  dist.initialize()                                   # before any JAX computation
  mesh = dist.data_mesh()
  sl = dist.process_slice(len(x_all))
  xs, ts, idx = dist.shard_batch((x_all[sl], t_all[sl], np.arange(sl.start, sl.stop)),
                                 mesh, global_size=len(x_all))
  maps = dist.per_example(attribution.smoothgrad, mesh)(fn, xs, ts, key=key, index=idx)
  maps = dist.gather_examples(maps, len(x_all))       # numpy, on every process
"""

from rattr_jax.distributed._launch import free_port
from rattr_jax.distributed._launch import launch
from rattr_jax.distributed._launch import process_env
from rattr_jax.distributed._launch import join_job
from rattr_jax.distributed._mesh import data_mesh
from rattr_jax.distributed._mesh import DATA_AXIS
from rattr_jax.distributed._mesh import per_example
from rattr_jax.distributed._multihost import add_cli_args
from rattr_jax.distributed._multihost import gather
from rattr_jax.distributed._multihost import gather_examples
from rattr_jax.distributed._multihost import global_array
from rattr_jax.distributed._multihost import initialize
from rattr_jax.distributed._multihost import initialize_from_args
from rattr_jax.distributed._multihost import is_main_process
from rattr_jax.distributed._multihost import local_batch_size
from rattr_jax.distributed._multihost import process_slice
from rattr_jax.distributed._multihost import replicate
from rattr_jax.distributed._multihost import shard_batch
from rattr_jax.distributed._multihost import sync

__all__ = [
    "add_cli_args", "data_mesh", "DATA_AXIS", "per_example", "gather", "gather_examples",
    "global_array",
    "initialize", "initialize_from_args", "is_main_process", "local_batch_size", "process_slice",
    "replicate", "shard_batch", "sync", "free_port", "launch", "process_env", "join_job",
]
