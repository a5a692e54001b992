"""Lazily indexed, memory-mapped datasets (`load_dataset(..., lazy=True)`, `LazyRows`).

* Values equal the eager loader's exactly (same seed, split, order, cuts), on
  the offline CIFAR-10 and MNIST copies (skipped when absent) and on small
  ``.npz`` files written here; every kind of index reads the right rows.
* The ``.npy`` cache is written once and reused; two writers racing on it
  leave complete files.
* Training on lazy data equals training on eager data (parameters and history
  bitwise), and never reads more than one chunk of batches at a time.
* A process of a (simulated) 2-process layout reads exactly the rows of its
  own columns of each global batch and of its rows of each evaluation chunk.
* (slow) A real 2-process job trains lazily, each process reading only its
  columns, and equals the single-process run.
"""

import json
import os
import pathlib
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from rattr_jax import data as D
from rattr_jax.data import _lazy

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  """A fresh cache directory per test (never ``~/.cache``)."""
  d = tmp_path / "cache"
  monkeypatch.setenv(D.DATA_CACHE_ENV, str(d))
  monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
  return d


def _mnist_npz(d, n=300, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
  y = (np.arange(n) % 10).astype(np.uint8)
  d.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(d / "mnist_t10k.npz", x=x, y=y)
  return x, y


def _cifar_npz(d, n=60, seed=1):
  rng = np.random.default_rng(seed)
  c = {"x_train": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
       "y_train": (np.arange(n) % 10).astype(np.uint8),
       "x_test": rng.integers(0, 256, (n // 2, 32, 32, 3), dtype=np.uint8),
       "y_test": np.sort(np.arange(n // 2) % 10).astype(np.uint8)}
  d.mkdir(parents=True, exist_ok=True)
  np.savez(d / "cifar10.npz", **c)
  return c


def _assert_same(eager, lazy):
  assert isinstance(lazy.x_train, D.LazyRows) and isinstance(lazy.x_test, D.LazyRows)
  for f in ("x_train", "x_test"):
    a, b = getattr(eager, f), getattr(lazy, f)
    assert b.shape == a.shape and b.dtype == a.dtype == np.float32 and b.ndim == a.ndim
    assert len(b) == len(a)
    np.testing.assert_array_equal(np.asarray(b), a)
  for f in ("y_train", "y_test"):
    a, b = getattr(eager, f), getattr(lazy, f)
    assert isinstance(b, np.ndarray) and b.dtype == a.dtype == np.int32
    np.testing.assert_array_equal(b, a)
  assert (lazy.num_classes, lazy.name, lazy.source) == (eager.num_classes, eager.name,
                                                         eager.source)
  assert lazy.input_shape == eager.input_shape


@pytest.mark.parametrize("name,file", [("cifar10", "cifar10.npz"), ("mnist", "mnist_t10k.npz")])
def test_lazy_equals_eager_on_the_offline_copies(name, file):
  if not (SHARED / file).is_file():
    pytest.skip(f"{SHARED / file} not present")
  kw = dict(data_dir=SHARED, seed=5, max_train=3000, max_test=700)
  _assert_same(D.load_dataset(name, **kw), D.load_dataset(name, lazy=True, **kw))


@pytest.mark.parametrize("seed", [0, 3])
def test_lazy_equals_eager_on_written_files(tmp_path, seed):
  _mnist_npz(tmp_path)
  _cifar_npz(tmp_path)
  for name in ("mnist", "cifar10"):
    for cut in ({}, {"max_train": 17, "max_test": 9}):
      kw = dict(data_dir=tmp_path, seed=seed, **cut)
      _assert_same(D.load_dataset(name, **kw), D.load_dataset(name, lazy=True, **kw))


def test_indexing_reads_the_right_rows(tmp_path):
  _mnist_npz(tmp_path)
  e = D.load_dataset("mnist", data_dir=tmp_path, seed=2)
  a, x = D.load_dataset("mnist", data_dir=tmp_path, seed=2, lazy=True).x_train, e.x_train
  assert a.shape == (240, 28, 28, 1) and "LazyRows" in repr(a)
  # lazy=None: lazy exactly when the job has several processes (one here)
  auto = D.load_dataset("mnist", data_dir=tmp_path, seed=2, lazy=None).x_train
  assert isinstance(auto, D.LazyRows) is (jax.process_count() > 1)
  idx2 = np.array([[5, 0, 5], [239, -1, 7]])
  mask = np.arange(len(x)) % 7 == 0
  for key in (0, 17, -1, np.int64(3), slice(None), slice(10, 20), slice(None, None, -3),
              slice(500, 600), np.array([4, 4, 1, 200]), idx2, np.array([], np.int64), mask,
              (slice(2, 6), 14), (3, slice(0, 5), 0), (idx2, Ellipsis, 0)):
    got = a[key]
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, x[key], err_msg=repr(key))
  np.testing.assert_array_equal(np.asarray(a, np.float64), x.astype(np.float64))
  # subset composes index maps: nothing is read until indexed
  sub = a.subset(slice(10, 110)).subset(np.array([99, 0, 50]))
  assert isinstance(sub, D.LazyRows) and sub.shape == (3, 28, 28, 1)
  np.testing.assert_array_equal(sub[:], x[10:110][[99, 0, 50]])
  np.testing.assert_array_equal(D.take_rows(x, slice(3, 5)), x[3:5])
  assert isinstance(D.take_rows(a, mask), D.LazyRows)
  with pytest.raises(IndexError):
    a[240]
  with pytest.raises(IndexError):
    a[np.array([0, 240])]
  with pytest.raises(IndexError):
    a[np.array([0.5])]
  with pytest.raises(ValueError, match="`key`"):
    a.subset(3)
  with pytest.raises(ValueError, match="`lazy`"):
    D.load_dataset("mnist", data_dir=tmp_path, lazy="yes")


def test_embedded_datasets_ignore_lazy():
  d = D.load_dataset("digits", lazy=True)
  assert isinstance(d.x_train, np.ndarray)
  np.testing.assert_array_equal(d.x_train, D.load_dataset("digits").x_train)


def test_cache_is_written_once_and_reused(tmp_path, cache, monkeypatch):
  _cifar_npz(tmp_path)
  copies = []
  real = _lazy.shutil.copyfileobj
  monkeypatch.setattr(_lazy.shutil, "copyfileobj", lambda *a: (copies.append(1), real(*a)))
  D.load_dataset("cifar10", data_dir=tmp_path, lazy=True)
  (sub,) = cache.iterdir()
  assert sub.name.startswith("cifar10-")
  files = sorted(p.name for p in sub.iterdir())
  assert files == ["x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"] and len(copies) == 4
  stamp = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sub.iterdir()}
  d = D.load_dataset("cifar10", data_dir=tmp_path, lazy=True, seed=9)
  assert len(copies) == 4  # nothing copied again
  assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sub.iterdir()} == stamp
  assert isinstance(d.x_train._data, np.memmap) and d.x_train._data.dtype == np.uint8
  # a changed source file gets its own directory
  _cifar_npz(tmp_path, n=40, seed=4)
  os.utime(tmp_path / "cifar10.npz", ns=(1, 1))
  assert len(D.load_dataset("cifar10", data_dir=tmp_path, lazy=True).x_train) == 40
  assert len(list(cache.iterdir())) == 2


def test_two_writers_racing_leave_complete_files(tmp_path, cache, monkeypatch):
  c = _cifar_npz(tmp_path)
  src = tmp_path / "cifar10.npz"
  # Deterministic interleaving: writer A has written its temporary copy of the first member
  # when writer B runs to the end; then A replaces B's files with its own (identical) ones.
  real_replace = os.replace
  state = {"inner": False}

  def replace(a, b):
    if not state["inner"]:
      state["inner"] = True
      arrays = _lazy.extract_npz(src, "cifar10")  # writer B, start to finish
      np.testing.assert_array_equal(arrays["x_train"], c["x_train"])
    real_replace(a, b)

  monkeypatch.setattr(_lazy.os, "replace", replace)
  arrays = _lazy.extract_npz(src, "cifar10")
  monkeypatch.setattr(_lazy.os, "replace", real_replace)
  for k, v in c.items():
    np.testing.assert_array_equal(arrays[k], v)
  (sub,) = cache.iterdir()
  assert sorted(p.name for p in sub.iterdir()) == sorted(k + ".npy" for k in c)  # no temp files
  # Two threads at once on a fresh cache.
  monkeypatch.setenv(D.DATA_CACHE_ENV, str(tmp_path / "cache2"))
  barrier, out = threading.Barrier(2), []

  def writer():
    barrier.wait()
    out.append(_lazy.extract_npz(src, "cifar10"))

  threads = [threading.Thread(target=writer) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(out) == 2
  for arrays in out:
    for k, v in c.items():
      np.testing.assert_array_equal(arrays[k], v)


# ------------------------------------------------------------------------ training
def _train(tmp_path, lazy, **kw):
  from rattr_jax import training
  cfg = training.preset("fast_cpu", model="mlp", dataset="mnist", data_dir=str(tmp_path),
                        max_train=200, max_test=50, batch_size=16, epochs=2, lazy_data=lazy,
                        eval_batch_size=32, **kw)
  return training.train(cfg, progress=False)


def _history(res):
  hist = res["history"] if isinstance(res, dict) else res.history
  return [{k: v for k, v in h.items() if k not in ("seconds", "examples_per_second")}
          for h in hist]


@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_training_lazy_equals_eager(tmp_path, monkeypatch, val_fraction):
  _mnist_npz(tmp_path)
  eager = _train(tmp_path, False, val_fraction=val_fraction)
  reads = []
  real = D.LazyRows._read
  monkeypatch.setattr(D.LazyRows, "_read", lambda self, rows: (reads.append(len(rows)),
                                                               real(self, rows))[1])
  lazy = _train(tmp_path, True, val_fraction=val_fraction)
  for a, b in zip(jax.tree_util.tree_leaves(eager.state.params),
                  jax.tree_util.tree_leaves(lazy.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _history(lazy) == _history(eager)
  # rows are read a chunk of steps (or of evaluation) at a time, never the whole training set
  n_train = 200 - round(val_fraction * 200)
  assert reads and max(reads) < n_train, reads


def test_config_and_cli_flag():
  from rattr_jax import training
  from rattr_jax.cli import build_parser
  from rattr_jax.cli._train import config_from_args
  assert training.preset("fast_cpu").lazy_data is None
  assert training.preset("fast_cpu", lazy_data=True).lazy_data is True
  with pytest.raises(ValueError, match="`lazy_data`"):
    training.preset("fast_cpu", lazy_data="yes")
  for flags, want in (([], None), (["--lazy-data"], True), (["--no-lazy-data"], False)):
    args = build_parser().parse_args(["train", "--out", "x", *flags])
    assert config_from_args(args).lazy_data is want


# ------------------------------------------------------ what one process reads
class _ProcessSharding:
  """The shards of process ``p`` of ``P`` (``L`` devices each) of a sharding of ``axis``:
  what `distributed.global_array` sees in a multi-process job."""

  is_fully_addressable = False

  def __init__(self, p, num_processes, local_devices, axis):
    self.p, self.P, self.L, self.axis = p, num_processes, local_devices, axis

  def addressable_devices_indices_map(self, shape):
    n = self.P * self.L
    b = shape[self.axis] // n
    out = {}
    for d in range(self.p * self.L, (self.p + 1) * self.L):
      ix = [slice(None)] * len(shape)
      ix[self.axis] = slice(d * b, (d + 1) * b)
      out[f"device{d}"] = tuple(ix)
    return out


def test_each_process_reads_only_its_columns_and_rows(tmp_path, monkeypatch):
  """`_process_batches` and `_eval_chunks` of the training loop, run as process p of a
  2-process x 2-device job: the rows read from the `LazyRows` are exactly that process's
  columns of each global batch (its rows of each evaluation chunk), and the block it hands
  to `jax.make_array_from_process_local_data` is those rows' values."""
  from rattr_jax.training import _loop
  _mnist_npz(tmp_path)
  data = D.load_dataset("mnist", data_dir=tmp_path, seed=1, lazy=True)
  x, y, xe = data.x_train, data.y_train, D.load_dataset("mnist", data_dir=tmp_path, seed=1).x_train
  raw = x.index
  k, B = 3, 16
  idx = np.random.default_rng(0).permutation(len(x))[:k * B].reshape(k, B)
  handed = []
  monkeypatch.setattr(jax, "make_array_from_process_local_data",
                      lambda sharding, a, shape: (handed.append((a, shape)), a)[1])
  real = D.LazyRows._read
  for p in (0, 1):
    reads = []
    monkeypatch.setattr(D.LazyRows, "_read", lambda self, rows: (reads.append(rows.copy()),
                                                                 real(self, rows))[1])
    monkeypatch.setattr(_loop, "NamedSharding", lambda mesh, spec: _ProcessSharding(
        p, 2, 2, 1 if len(spec) == 2 else 0))
    handed.clear()
    xb, yb = _loop._process_batches(object(), x, y, idx)
    cols = idx[:, p * B // 2:(p + 1) * B // 2]
    assert len(reads) == 1 and list(reads[0]) == list(raw[cols.ravel()])
    np.testing.assert_array_equal(xb, xe[cols])
    np.testing.assert_array_equal(yb, y[cols])
    assert [s for _, s in handed] == [(k, B, 28, 28, 1), (k, B)]
    # evaluation: 45 examples in chunks of 24 (the last padded); process p reads rows
    # [12p, 12p + 12) of each chunk that exist
    reads.clear()
    chunks = list(_loop._eval_chunks(x.subset(slice(0, 45)), y[:45], 24, 4, object()))
    want = [raw[s:min(e, 45)] for c in (0, 24) for s, e in [(c + 12 * p, c + 12 * p + 12)]
            if s < 45]
    assert [list(r) for r in reads] == [list(w) for w in want]
    for (xc, yc), c in zip(chunks, (0, 24)):
      lo = c + 12 * p
      n_real = max(0, min(12, 45 - lo))
      np.testing.assert_array_equal(xc[:n_real], xe[lo:lo + n_real])
      assert (xc[n_real:] == 0).all() and (yc[n_real:] == -1).all()
      np.testing.assert_array_equal(yc[:n_real], y[lo:lo + n_real])


# ------------------------------------------------------ a real 2-process job
_JOB = r"""
import json, sys
from rattr_jax import distributed as dist
dist.initialize()
import jax, numpy as np
from rattr_jax import data as D, training
data_dir, out = sys.argv[1], sys.argv[2]
reads = []
real = D.LazyRows._read
def spy(self, rows):
  reads.append([int(r) for r in rows])
  return real(self, rows)
D.LazyRows._read = spy
cfg = training.preset("fast_cpu", model="mlp", dataset="mnist", data_dir=data_dir, max_train=200,
                      max_test=50, batch_size=16, epochs=2, eval_batch_size=32)
assert cfg.lazy_data is None  # the default: lazy with several processes
assert isinstance(D.load_dataset("mnist", data_dir=data_dir, lazy=None).x_train, D.LazyRows)
res = training.train(cfg, progress=False)
params = [np.asarray(dist.gather(p)).tolist() for p in jax.tree_util.tree_leaves(res.state.params)]
with open(f"{out}.{jax.process_index()}", "w") as f:
  json.dump({"reads": reads, "history": res.history, "params": params}, f)
"""


@pytest.mark.slow
def test_two_process_lazy_training_reads_its_columns_and_equals_one_process(tmp_path):
  from rattr_jax import distributed as L
  _mnist_npz(tmp_path)
  script = tmp_path / "job.py"
  script.write_text(_JOB)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  rc = L.launch([sys.executable, str(script), str(tmp_path), str(tmp_path / "out")],
                num_processes=2, devices_per_process=1, env=env)
  assert rc == 0
  runs = [json.loads((tmp_path / f"out.{p}").read_text()) for p in (0, 1)]
  ref = _train(tmp_path, None)
  assert ref.config.lazy_data is None  # one process: eager by default (test above)
  # Same batches as one process; float tolerance: the gradient of each batch is summed
  # over 2 devices (another order than one device).
  for run in runs:
    for h, g in zip(_history(run), _history(ref), strict=True):
      assert h.keys() == g.keys()
      np.testing.assert_allclose([h[k] for k in sorted(h)], [g[k] for k in sorted(g)],
                                 rtol=1e-4, atol=1e-4)
    for a, b in zip(run["params"], jax.tree_util.tree_leaves(ref.state.params), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
  # Exactly the rows each process uses: 2 rows to set up (the terms' example pair), then
  # per epoch its 8 columns of the [12, 16] batches of the epoch's
  # permutation (one chunk of 12 steps), and its 16 rows of each 32-row evaluation chunk.
  lazy = D.load_dataset("mnist", data_dir=tmp_path, seed=0, max_train=200, max_test=50,
                        lazy=True)
  tr, te = lazy.x_train.index, lazy.x_test.index
  for p, run in enumerate(runs):
    want = [tr[:2]]
    for epoch in range(2):
      perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(0), epoch),
                                               200))
      idx = perm[:192].reshape(12, 16)
      want += [tr[idx[:, 8 * p:8 * p + 8].ravel()], te[16 * p:16 * p + 16],
               te[32 + 16 * p:min(48 + 16 * p, 50)]]
    assert run["reads"] == [w.tolist() for w in want], [len(r) for r in run["reads"]]


def _without_times(o):
  if isinstance(o, dict):
    return {k: _without_times(v) for k, v in o.items()
            if k not in ("ms_per_image", "seconds", "train_seconds", "figure", "out", "path",
                         "attributions", "png", "lazy_data")}
  if isinstance(o, list):
    return [_without_times(v) for v in o]
  return o


@pytest.mark.slow
@pytest.mark.parametrize("command,args,summary", [
    ("explain", ["--num-images", "2", "--num-steps", "4", "--num-samples", "2"], "summary.json"),
    ("attack", ["--num-eval", "2", "--num-images", "2", "--num-steps", "3", "--attack", "topk"],
     "attack.json"),
])
def test_cli_explain_and_attack_lazy_equal_eager(tmp_path, cache, command, args, summary):
  # `rattr explain` / `rattr attack --lazy-data` (the default with several processes) read
  # the memory-mapped copy and give the same maps, scores and accuracies as eager loading.
  from rattr_jax.cli import main
  _mnist_npz(tmp_path / "data", n=400)
  common = [command, "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--epochs",
            "1", "--max-train", "256", *args]
  assert main(common + ["--no-lazy-data", "--out", str(tmp_path / "eager")]) == 0
  assert not cache.exists() or not any(cache.iterdir())
  assert main(common + ["--lazy-data", "--out", str(tmp_path / "lazy")]) == 0
  assert any(cache.rglob("*.npy"))  # the lazy run read the memory-mapped copy
  eager = json.loads((tmp_path / "eager" / summary).read_text())
  lazy = json.loads((tmp_path / "lazy" / summary).read_text())
  assert _without_times(lazy) == _without_times(eager)
  if command == "explain":  # and the maps themselves, bitwise
    with np.load(tmp_path / "eager" / "attributions.npz") as a, \
        np.load(tmp_path / "lazy" / "attributions.npz") as b:
      assert sorted(a.files) == sorted(b.files)
      for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
