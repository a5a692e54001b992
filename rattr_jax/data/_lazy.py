"""Lazily indexed, memory-mapped image rows: each process reads only the rows it uses.

`LazyRows` holds a raw (e.g. uint8) array on disk, memory-mapped, and an index
map into it; indexing it reads just the requested rows and converts them to
float32 in [0, 1]. Splits, seeded permutations and truncations compose as index
arrays (`LazyRows.subset`), never copying pixels. `extract_npz` copies the
members of an ``.npz`` once to ``.npy`` files in a cache directory (safe when
several processes start together), so that they can be memory-mapped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

#: Environment variable naming the cache directory of extracted arrays
#: (default ``~/.cache/rattr_jax/data``).
DATA_CACHE_ENV = "RATTR_DATA_CACHE"


def _as_float_images(raw: np.ndarray) -> np.ndarray:
  """Raw pixels ``[n, H, W]`` or ``[n, H, W, C]`` -> float32 ``[n, H, W, C]`` in [0, 1]
  (the same arithmetic as the eager loader)."""
  a = np.asarray(raw, np.float32) / 255.0
  return a[..., None] if a.ndim == 3 else a


class LazyRows:
  """Rows ``index`` of a raw image array, read on demand as float32 NHWC in [0, 1].

  Behaves like the ``[n, H, W, C]`` float32 array ``x[index] / 255`` (with a
  channel axis added to ``[N, H, W]`` grayscale data) without holding it:
  ``a[i]`` (an int), ``a[i:j]`` (a slice) and ``a[idx]`` (an integer array of
  any shape, or a boolean mask ``[n]``) read only those rows from ``data``
  (usually a read-only `numpy.memmap`) and return numpy float32 arrays;
  ``a[rows, ...rest]`` applies ``rest`` to the rows read. ``np.asarray(a)``
  reads everything. `subset` composes index maps without reading.

  Args:
    data: raw rows ``[N, H, W]`` or ``[N, H, W, C]`` (any real dtype; values
      divided by 255).
    index: rows of ``data`` in order, int ``[n]`` (default: all ``N``).
  """

  def __init__(self, data: np.ndarray, index: np.ndarray | None = None):
    if np.ndim(data) not in (3, 4):
      raise ValueError(f"`data` must be [N, H, W] or [N, H, W, C]; got shape {np.shape(data)}.")
    n_data = data.shape[0]
    index = np.arange(n_data, dtype=np.int64) if index is None else np.asarray(index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
      raise ValueError(f"`index` must be a 1-D integer array; got {index.dtype} "
                       f"{index.shape}.")
    if index.size and (index.min() < 0 or index.max() >= n_data):
      raise ValueError(f"`index` must lie in [0, {n_data}); got values in "
                       f"[{index.min()}, {index.max()}].")
    self._data = data
    self._index = index.astype(np.int64, copy=False)
    row = tuple(int(d) for d in data.shape[1:])
    self._row_shape = row + (1,) if len(row) == 2 else row

  # ------------------------------------------------------------------ array-like
  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self._index),) + self._row_shape

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  @property
  def ndim(self) -> int:
    return 1 + len(self._row_shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape))

  @property
  def index(self) -> np.ndarray:
    """Rows of the underlying raw array, int64 ``[n]`` (read-only view)."""
    v = self._index.view()
    v.flags.writeable = False
    return v

  def __len__(self) -> int:
    return len(self._index)

  def __repr__(self) -> str:
    return f"LazyRows(shape={self.shape}, dtype=float32, source={type(self._data).__name__})"

  def _positions(self, key) -> np.ndarray | int:
    """``key`` (int, slice, int or bool array) as positions into ``self._index``."""
    n = len(self._index)
    if isinstance(key, slice):
      return np.arange(n)[key]
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
      if not -n <= key < n:
        raise IndexError(f"index {key} is out of bounds for LazyRows of length {n}")
      return int(key) % n
    key = np.asarray(key)
    if key.dtype == bool:
      if key.shape != (n,):
        raise IndexError(f"boolean index of shape {key.shape} for LazyRows of length {n}")
      return np.flatnonzero(key)
    if not np.issubdtype(key.dtype, np.integer):
      raise IndexError(f"LazyRows rows are indexed by ints, slices or integer/boolean arrays; "
                       f"got {key.dtype}.")
    if key.size and (key.min() < -n or key.max() >= n):
      raise IndexError(f"index out of bounds for LazyRows of length {n}")
    return np.where(key < 0, key + n, key)

  def _read(self, rows: np.ndarray) -> np.ndarray:
    """Raw rows ``data[rows]`` for int ``[m]`` ``rows``, each distinct row read once, in
    increasing order (sequential access to the memory map)."""
    if rows.size == 0:
      return np.zeros((0,) + tuple(self._data.shape[1:]), self._data.dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    block = np.asarray(self._data[uniq])
    return block if len(uniq) == len(rows) and np.array_equal(uniq, rows) else block[inverse]

  def __getitem__(self, key) -> np.ndarray:
    rest = ()
    if isinstance(key, tuple):
      key, rest = (key[0], key[1:]) if key else (slice(None), ())
    pos = self._positions(key)
    if isinstance(pos, int):
      out = _as_float_images(self._read(self._index[[pos]]))[0]
      return out[rest] if rest else out
    flat = np.asarray(pos).reshape(-1)
    out = _as_float_images(self._read(self._index[flat]))
    out = out.reshape(np.shape(pos) + self._row_shape)
    return out[(slice(None),) * np.ndim(pos) + rest] if rest else out

  def __array__(self, dtype=None, copy=None):
    if copy is False:
      raise ValueError("LazyRows cannot be viewed as an array without a copy.")
    out = self[:]
    return out if dtype is None else out.astype(dtype, copy=False)

  def subset(self, key) -> "LazyRows":
    """The rows ``key`` (int array, boolean mask or slice) as a `LazyRows`, reading nothing."""
    pos = self._positions(key)
    if isinstance(pos, int) or np.ndim(pos) != 1:
      raise ValueError("`key` of `subset` must be a slice or a 1-D integer/boolean array.")
    return LazyRows(self._data, self._index[pos])


def take_rows(x, key):
  """``x[key]`` for a numpy array; a lazy `LazyRows.subset` for a `LazyRows` (no reading)."""
  return x.subset(key) if isinstance(x, LazyRows) else x[key]


# ------------------------------------------------------------------------ cache
def cache_root() -> Path:
  """Directory of extracted dataset arrays: ``$RATTR_DATA_CACHE`` or ``~/.cache/rattr_jax/data``."""
  env = os.environ.get(DATA_CACHE_ENV)
  return Path(env) if env else Path.home() / ".cache" / "rattr_jax" / "data"


def cache_dir_of(path: str | os.PathLike, name: str) -> Path:
  """The cache directory of ``path``'s arrays: ``<cache_root>/<name>-<hash>``, the hash of the
  file's resolved path, size and modification time (a changed file gets a new directory)."""
  p = Path(path).resolve()
  st = p.stat()
  h = hashlib.sha256(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
  return cache_root() / f"{name}-{h}"


def extract_npz(path: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
  """The arrays of an ``.npz`` file, memory-mapped read-only from ``.npy`` copies.

  Each member is copied (streamed, constant memory) once to
  ``cache_dir_of(path, name)/<key>.npy``: written to a temporary name in the
  same directory, then renamed with `os.replace`, so processes that start
  together may both write it and every reader sees a complete file. Later
  calls only map the files.

  Returns:
    ``{key: np.memmap}`` for every member.
  """
  d = cache_dir_of(path, name)
  with zipfile.ZipFile(path) as zf:
    members = [m for m in zf.namelist() if m.endswith(".npy")]
    missing = [m for m in members if not (d / m).is_file()]
    if missing:
      d.mkdir(parents=True, exist_ok=True)
      for m in missing:
        fd, tmp = tempfile.mkstemp(prefix=f".{m}.", suffix=".tmp", dir=d)
        try:
          with os.fdopen(fd, "wb") as dst, zf.open(m) as src:
            shutil.copyfileobj(src, dst, 1 << 22)
          os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
          os.replace(tmp, d / m)
        except BaseException:
          if os.path.exists(tmp):
            os.unlink(tmp)
          raise
  return {m[:-4]: np.load(d / m, mmap_mode="r") for m in members}
