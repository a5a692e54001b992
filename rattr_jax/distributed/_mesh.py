"""A 1-D data mesh and `per_example`: any per-example method, data-parallel over it.

`per_example(f, mesh)` jits ``f`` once with `NamedSharding`: the batched
arguments are split over the mesh's ``"data"`` axis, everything else (the
model's weights, the explainer, configs, masks) is replicated, and GSPMD
partitions the program. No `shard_map`: per-example methods need no
collective, and one program serves every mesh.

Per-example results do not depend on the mesh, the batch size, the position
in the batch or padding: ``f`` is vmapped over examples, each called as a
batch of one, and the PRNG key of example ``i`` is ``fold_in(key, index[i])``
(``index`` defaults to the row number; pass the dataset positions when a
data set is processed in pieces).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rattr_jax import _jit

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over ``devices`` (default: every device of every process).

  Built as ``Mesh(np.array(devices), ("data",))``, not with `jax.make_mesh`,
  whose default explicit axis types make fancy indexing such as
  ``logits[jnp.arange(B), t]`` raise.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("`devices` must not be empty.")
  return Mesh(np.array(devices), (DATA_AXIS,))


def _is_array(a) -> bool:
  return isinstance(a, (jax.Array, np.ndarray))


def _batch_argnums(args, batch_argnums):
  if batch_argnums is not None:
    out = tuple(sorted(int(i) % len(args) for i in batch_argnums)) if args else ()
    for i in out:
      if not _is_array(args[i]) and not jax.tree_util.tree_leaves(args[i]):
        raise ValueError(f"`batch_argnums`: argument {i} holds no array.")
    return out
  first = next((i for i, a in enumerate(args) if _is_array(a) and np.ndim(a) >= 1), None)
  if first is None:
    raise ValueError("per_example: no positional array argument to batch over "
                     "(pass `batch_argnums`).")
  b = np.shape(args[first])[0]
  return tuple(i for i, a in enumerate(args)
               if i >= first and _is_array(a) and np.ndim(a) >= 1 and np.shape(a)[0] == b)


def _squeeze(o):
  return o[0] if (hasattr(o, "ndim") and o.ndim >= 1 and o.shape[0] == 1) else o


def per_example(f: Callable, mesh: Mesh | None = None, *,
                batch_argnums: Sequence[int] | None = None,
                chunk_size: int | None = None) -> Callable:
  """``f`` run per example, data-parallel over ``mesh``.

  Args:
    f: any rattr_jax per-example function, e.g. ``gradient(fn, x, target)``,
      ``smoothgrad(fn, x, target, *, key, ...)``, an attack
      ``attack(fn, explainer, x, target, *, key, config, ...)`` or a metric;
      its outputs have a leading batch axis.
    mesh: a mesh with a ``"data"`` axis (`data_mesh`); ``None`` runs on the
      default device (the single-device reference).
    batch_argnums: positions of the batched arguments. Default: every
      positional array whose leading size equals that of the first
      positional array (``x``); pass it when a non-batched array argument
      (e.g. an ``[H, W]`` mask) could have that size.
    chunk_size: examples computed at once per device (`jax.lax.map` over
      each device's rows, bounding memory); ``None`` = all of them. It does
      not change the results.

  Returns:
    ``run(*args, key=None, index=None, **kwargs)`` returning ``f``'s outputs
    for the whole batch. Batched arguments may be numpy arrays (any batch
    size: padded to a multiple of the device count, results trimmed) or
    global arrays already sharded over ``mesh`` (`shard_batch`). Other array
    leaves (model weights inside ``fn``, masks, keys) are replicated;
    non-array leaves are static (hashable; changing them recompiles).
    ``key`` (optional) is folded per example with ``index`` (``[B]`` ints,
    default ``0..B-1``); with ``key=None`` ``f`` gets no key. Example ``i``'s
    result equals ``f(*args_i, key=fold_in(key, index[i]))`` with
    ``args_i`` the batch of one ``x[i:i+1]`` (up to float reduction order),
    whatever the mesh or batch.
  """
  n_dev = 1 if mesh is None else int(mesh.devices.size)
  if mesh is not None and DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"`mesh` needs a {DATA_AXIS!r} axis; got {mesh.axis_names}.")
  batched_sh = None if mesh is None else NamedSharding(mesh, P(DATA_AXIS))
  rep_sh = None if mesh is None else NamedSharding(mesh, P())
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
    raise ValueError(f"`chunk_size` must be a positive int or None; got {chunk_size!r}.")

  def inner(bat, idx, key, rep, static):
    pos, kw, bpos = _jit.combine(rep, static)

    def one(b_i, i):
      args = list(pos)
      for j, v in zip(bpos, b_i):
        args[j] = jax.tree_util.tree_map(lambda a: a[None], v)
      kwargs = dict(kw)
      if key is not None:
        kwargs["key"] = jax.random.fold_in(key, i)
      return jax.tree_util.tree_map(_squeeze, f(*args, **kwargs))

    if chunk_size is None:
      return jax.vmap(one)(bat, idx)
    # [B] -> [devices, B / devices]: each device maps over its own rows in
    # chunks (no data moves between devices), then back to [B].
    def split(a):
      a = a.reshape((n_dev, a.shape[0] // n_dev) + a.shape[1:])
      return a if mesh is None else jax.lax.with_sharding_constraint(
          a, NamedSharding(mesh, P(DATA_AXIS)))

    b2, i2 = jax.tree_util.tree_map(split, (bat, idx))
    out = jax.vmap(lambda b, i: jax.lax.map(lambda bi: one(*bi), (b, i),
                                            batch_size=chunk_size))(b2, i2)
    return jax.tree_util.tree_map(lambda o: o.reshape((-1,) + o.shape[2:]), out)

  if mesh is not None:
    jitted = jax.jit(inner, static_argnums=(4,), in_shardings=(batched_sh, batched_sh, rep_sh, rep_sh),
                     out_shardings=batched_sh)
  else:
    jitted = jax.jit(inner, static_argnums=(4,))

  @functools.wraps(f)
  def run(*args, key=None, index=None, **kwargs):
    bpos = _batch_argnums(args, batch_argnums)
    if not bpos:
      raise ValueError("per_example: no batched argument.")
    bat = [args[i] for i in bpos]
    b = int(np.shape(jax.tree_util.tree_leaves(bat[0])[0])[0])
    for v in bat:
      for leaf in jax.tree_util.tree_leaves(v):
        if np.shape(leaf)[0] != b:
          raise ValueError(f"per_example: batched arguments differ in leading size "
                           f"({np.shape(leaf)[0]} vs {b}).")
    if index is None:
      index = np.arange(b, dtype=np.int32)
    elif np.shape(index) != (b,):
      raise ValueError(f"`index` must have shape ({b},); got {np.shape(index)}.")
    if key is not None and not hasattr(key, "dtype"):
      raise ValueError(f"`key` must be a JAX PRNG key; got {type(key).__name__}.")
    pad = (-b) % n_dev
    sharded = [isinstance(l, jax.Array) and not l.is_fully_addressable
               for l in jax.tree_util.tree_leaves((bat, index))]
    if pad and any(sharded):
      raise ValueError(f"per_example: a global array's batch ({b}) must be a multiple of the "
                       f"device count ({n_dev}); build it with `shard_batch`.")

    def prep(a):
      if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return a
      a = np.asarray(a)
      if pad:
        a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
      return a if batched_sh is None else _from_host(a, batched_sh)

    bat_p = jax.tree_util.tree_map(prep, tuple(bat))
    idx_p = prep(np.asarray(index, np.int32) if not isinstance(index, jax.Array) else index)
    pos = tuple(None if i in bpos else a for i, a in enumerate(args))
    rep, static = _jit.partition((pos, kwargs, bpos))
    if rep_sh is not None:
      rep = [a if (isinstance(a, jax.Array) and not a.is_fully_addressable)
             else jax.device_put(np.asarray(a), rep_sh) for a in rep]
      if key is not None and not (isinstance(key, jax.Array) and not key.is_fully_addressable):
        key = _put_key(key, rep_sh)
    out = jitted(bat_p, idx_p, key, rep, static)
    if pad:
      out = jax.jit(lambda o: jax.tree_util.tree_map(lambda a: a[:b], o))(out)
    return out

  run.clear_cache = jitted.clear_cache
  return run


def _from_host(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """``a`` (the whole batch, the same in every process) as a global array sharded by ``sharding``.

  One process: a `jax.device_put`. Several: each process hands over only the
  rows its own devices hold (`jax.make_array_from_process_local_data`), so no
  host array travels between processes.
  """
  if sharding.is_fully_addressable:
    return jax.device_put(a, sharding)
  from rattr_jax.distributed._multihost import global_array
  return global_array(a.shape, sharding, lambda idx: a[idx])


def _put_key(key, sharding):
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(key)
    data = jax.device_put(np.asarray(jax.random.key_data(key)), sharding)
    return jax.random.wrap_key_data(data, impl=impl)
  return jax.device_put(np.asarray(key), sharding)
