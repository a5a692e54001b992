"""The contract table (`rattr_jax.testing.contract_table`) run through generic checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rattr_jax import testing
from rattr_jax.testing import Contract

ROWS = testing.contract_table()
KEY = jax.random.key(0)


def _setup(row: Contract, batch: int = 3, seed: int = 0):
  fn = testing.contract_model(row.model)
  x = testing.contract_inputs(row.model, batch, seed)
  return fn, x, testing.contract_targets(fn, x)


def _close(a, b, rtol):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for u, v in zip(la, lb):
    np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=rtol,
                               atol=1e-6)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_jit_equals_eager(row):
  fn, x, t = _setup(row)
  jitted = row.call(fn, x, t, KEY)
  with jax.disable_jit():
    eager = row.call(fn, x, t, KEY)
  _close(jitted, eager, row.rtol)


@pytest.mark.parametrize("row", [r for r in ROWS if r.per_example],
                         ids=[r.name for r in ROWS if r.per_example])
def test_batched_equals_per_example(row):
  fn, x, t = _setup(row)
  keys = jax.random.split(KEY, x.shape[0]) if row.keys == "per_example" else None
  full = row.call(fn, x, t, KEY if keys is None else keys)
  rows_full = testing.contract_batch_leaves(full, x.shape[0])
  assert rows_full, row.name
  for i in range(x.shape[0]):
    one = row.call(fn, x[i:i + 1], t[i:i + 1], KEY if keys is None else keys[i:i + 1])
    for a, b in zip(rows_full, testing.contract_batch_leaves(one, 1)):
      np.testing.assert_allclose(np.asarray(b[0], np.float64), np.asarray(a[i], np.float64),
                                 rtol=row.rtol, atol=1e-6, err_msg=row.name)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_one_trace_per_shape_and_output_contract(row):
  fn, x, t = _setup(row)
  x2 = testing.contract_inputs(row.model, 3, seed=1)
  chex.clear_trace_counter()  # the counter is keyed by the function's code, shared by rows

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(z, k):
    return row.call(fn, z, t, k)

  a = run(x, KEY)
  b = run(x2, jax.random.key(1))
  for out in (a, b):
    leaves = testing.contract_batch_leaves(out, 3)
    assert leaves, row.name
    for l in leaves:
      if np.issubdtype(l.dtype, np.floating):
        assert l.dtype == x.dtype, (row.name, l.dtype)
  # Under the outer jit the values are those of the direct call.
  _close(a, row.call(fn, x, t, KEY), row.rtol)
