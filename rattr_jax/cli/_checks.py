"""Argument checks of the ``rattr`` commands, run before any data is loaded or code compiled.

Everything here is pure Python (no JAX, no NumPy): argparse ``type=``
converters, which make argparse print ``rattr <cmd>: error: argument --flag:
...`` and exit with status 2, and path checks that raise `CLIError` naming
one flag. ``rattr --help`` and every argument error therefore return before
JAX is imported.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import tempfile
from fractions import Fraction

#: Largest count accepted by integer flags (epochs, steps, sizes).
MAX_INT = 2**31 - 1
#: Largest seed accepted (seeds feed ``jax.random.key`` and NumPy generators).
MAX_SEED = 2**32 - 1
#: Image datasets (``[N, H, W, C]``) and tabular ones (``[N, F]``), by name.
IMAGE_DATASETS = ("mnist_embedded", "digits", "mnist", "fashion_mnist", "cifar10")
TABULAR_DATASETS = ("breast_cancer", "wine", "iris")
DATASETS = IMAGE_DATASETS + TABULAR_DATASETS
ACTIVATIONS = ("relu", "tanh", "identity", "softplus", "softplus:BETA")


class CLIError(ValueError):
  """A bad command-line value; the message starts with the flag it names."""


def _number(text: str) -> float:
  """Parses ``"0.1"``, ``"1e-3"``, ``"8/255"`` (a fraction) or ``"inf"``."""
  t = text.strip()
  if "/" in t:
    num, _, den = t.partition("/")
    try:
      a, b = float(num), float(den)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255; got {text!r}")
    if b == 0 or not math.isfinite(a) or not math.isfinite(b):
      raise argparse.ArgumentTypeError(f"expected a finite fraction like 8/255; got {text!r}")
    return a / b
  try:
    return float(t)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None


def positive_int(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
  if not 0 < v <= MAX_INT:
    raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_INT}]; got {v}")
  return v


def nonneg_int(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}") from None
  if not 0 <= v <= MAX_INT:
    raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_INT}]; got {v}")
  return v


def seed(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_SEED}]; got {text!r}") from None
  if not 0 <= v <= MAX_SEED:
    raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}]; got {text}")
  return v


def positive_float(text: str) -> float:
  v = _number(text)
  if not (math.isfinite(v) and v > 0):
    raise argparse.ArgumentTypeError(f"must be a finite positive number; got {text!r}")
  return v


def nonneg_float(text: str) -> float:
  v = _number(text)
  if not (math.isfinite(v) and v >= 0):
    raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text!r}")
  return v


def fraction(text: str) -> float:
  """A number in [0, 1), e.g. a validation fraction."""
  v = _number(text)
  if not (math.isfinite(v) and 0 <= v < 1):
    raise argparse.ArgumentTypeError(f"must lie in [0, 1); got {text!r}")
  return v


def epsilon(text: str) -> float:
  """A radius in input units (inputs lie in [0, 1]): a number or fraction in [0, 1]."""
  v = _number(text)
  if not (math.isfinite(v) and 0 <= v <= 1):
    raise argparse.ArgumentTypeError(
        f"must lie in [0, 1] (input units; inputs lie in [0, 1]; write 8/255 for 8 grey "
        f"levels); got {text!r}")
  return v


def step_size(text: str) -> float:
  v = _number(text)
  if not (math.isfinite(v) and 0 < v <= 1):
    raise argparse.ArgumentTypeError(
        f"must lie in (0, 1] (input units; write 0.5/255 for half a grey level); got {text!r}")
  return v


def activation(text: str) -> str:
  """``relu``, ``tanh``, ``identity``, ``softplus`` or ``softplus:BETA`` with BETA > 0."""
  t = text.strip()
  if t in ACTIVATIONS[:4]:
    return t
  if t.startswith("softplus:"):
    b = t.split(":", 1)[1]
    try:
      beta = float(b)
    except ValueError:
      beta = float("nan")
    if math.isfinite(beta) and beta > 0:
      return t
    raise argparse.ArgumentTypeError(f"softplus:BETA needs a finite BETA > 0; got {text!r}")
  raise argparse.ArgumentTypeError(f"expected one of {', '.join(ACTIVATIONS)}; got {text!r}")


def int_list(text: str) -> tuple[int, ...]:
  """Comma-separated positive integers, e.g. ``100,150``."""
  parts = [s.strip() for s in text.split(",") if s.strip()]
  try:
    vals = tuple(int(s) for s in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated positive integers like 100,150; got {text!r}") from None
  if not vals or any(v <= 0 for v in vals):
    raise argparse.ArgumentTypeError(
        f"expected comma-separated positive integers like 100,150; got {text!r}")
  return vals


def float_list(text: str) -> tuple[float, ...]:
  """Comma-separated finite numbers >= 0 (fractions allowed), e.g. ``1e-4,1e-2,1``."""
  parts = [s.strip() for s in text.split(",") if s.strip()]
  try:
    vals = tuple(_number(s) for s in parts)
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated numbers >= 0 like 1e-4,1e-2,1; got {text!r}") from None
  if not vals or any(not (math.isfinite(v) and v >= 0) for v in vals):
    raise argparse.ArgumentTypeError(
        f"expected comma-separated numbers >= 0 like 1e-4,1e-2,1; got {text!r}")
  return vals


def name_list(text: str) -> tuple[str, ...]:
  vals = tuple(s.strip() for s in text.split(",") if s.strip())
  if not vals:
    raise argparse.ArgumentTypeError(f"expected comma-separated names; got {text!r}")
  return vals


def choice(choices, aliases=None):
  """A converter accepting ``choices`` (and ``aliases``: alias -> choice); lists them on error."""
  aliases = dict(aliases or {})

  def convert(text: str) -> str:
    t = text.strip()
    t = aliases.get(t, t)
    if t not in choices:
      names = list(choices) + [f"{a} (= {b})" for a, b in aliases.items()]
      raise argparse.ArgumentTypeError(f"invalid choice {text!r}; expected one of {', '.join(names)}")
    return t

  convert.__name__ = "choice"
  return convert


# ------------------------------------------------------------------------------ paths


def _probe(path: str) -> None:
  """Writes and removes a probe file in directory ``path`` (raises `OSError` if it cannot)."""
  fd, probe = tempfile.mkstemp(prefix=".rattr_probe_", dir=path)
  os.close(fd)
  os.remove(probe)


def _probe_writable(path: str, flag: str) -> None:
  try:
    _probe(path)
  except OSError as e:
    raise CLIError(f"{flag} {path!r} is not writable ({e.strerror or e}).") from None


def _nearest_existing(path: str) -> str:
  p = os.path.abspath(path)
  while not os.path.exists(p):
    parent = os.path.dirname(p)
    if parent == p:
      break
    p = parent
  return p


def out_dir(path: str, flag: str = "--out") -> str:
  """Checks that ``path`` is (or can become) a writable directory, without creating it.

  Raises:
    CLIError: empty, an existing file, under a file, or not writable.
  """
  if not isinstance(path, str) or not path.strip():
    raise CLIError(f"{flag} must be a directory path; got {path!r}.")
  if "\x00" in path:
    raise CLIError(f"{flag} must not contain NUL characters; got {path!r}.")
  if os.path.exists(path) and not os.path.isdir(path):
    raise CLIError(f"{flag} {path!r} is an existing file, not a directory.")
  # Every process of a multi-process job checks the same directory at the same time: a
  # directory that another process creates (or removes after its own probe) while this one
  # checks is a retry, not an error.
  tries = 3
  for attempt in range(tries):
    retry = attempt < tries - 1
    base = _nearest_existing(path)
    if not os.path.isdir(base):
      raise CLIError(f"{flag} {path!r} lies under {base!r}, which is a file, not a directory.")
    if not os.access(base, os.W_OK | os.X_OK):
      raise CLIError(f"{flag} {path!r}: {base!r} is not writable.")
    # os.access can say yes (root, special file systems such as /proc): create and probe.
    try:
      _create_and_probe(path, base)
      return path
    except _ProbeError as e:
      if e.errno == errno.ENOENT and retry:
        continue
      raise CLIError(f"{flag} {path!r} is not writable ({e.strerror or e}).") from None
    except OSError as e:
      if e.errno in (errno.ENOENT, errno.EEXIST) and retry:
        continue
      raise CLIError(f"{flag} {path!r} cannot be created ({e.strerror or e}).") from None
  raise AssertionError("unreachable: the last try returns or raises")


class _ProbeError(OSError):
  """The write probe inside an existing or just-created directory failed."""


def _create_and_probe(path: str, base: str) -> None:
  """Creates the missing directories below ``base``, writes a probe file, removes what it made."""
  created = []
  p = os.path.abspath(path)
  todo = []
  while p != base:
    todo.append(p)
    p = os.path.dirname(p)
  try:
    for d in reversed(todo):
      try:
        os.mkdir(d)
      except FileExistsError:
        if not os.path.isdir(d):
          raise
        continue  # created meanwhile by another process: not ours to remove
      created.append(d)
    try:
      _probe(path)
    except OSError as e:
      raise _ProbeError(e.errno, e.strerror) from None
  finally:
    for d in reversed(created):
      try:
        os.rmdir(d)
      except OSError:
        pass


def existing_dir(path: str, flag: str) -> str:
  if not isinstance(path, str) or not path.strip():
    raise CLIError(f"{flag} must be a directory path; got {path!r}.")
  if not os.path.isdir(path):
    what = "is a file" if os.path.exists(path) else "does not exist"
    raise CLIError(f"{flag} {path!r} {what}; expected an existing directory.")
  return path


def weights_file(path: str, flag: str = "--weights") -> str:
  """An existing ``.npz`` weights file, or a new path whose directory is writable."""
  if not isinstance(path, str) or not path.strip():
    raise CLIError(f"{flag} must be a file path; got {path!r}.")
  if os.path.isdir(path):
    raise CLIError(f"{flag} {path!r} is a directory; expected a .npz weights file.")
  if os.path.exists(path):
    try:
      with open(path, "rb") as f:
        magic = f.read(4)
    except OSError as e:
      raise CLIError(f"{flag} {path!r} cannot be read ({e.strerror or e}).") from None
    if magic != b"PK\x03\x04":  # .npz files are zip archives
      raise CLIError(f"{flag} {path!r} is not a .npz weights file (written by --weights of "
                     "an earlier run).")
    return path
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise CLIError(f"{flag} {path!r}: directory {parent!r} does not exist.")
  if not path.endswith(".npz"):
    raise CLIError(f"{flag} {path!r} must end in .npz (numpy appends it otherwise).")
  _probe_writable(parent, flag)
  return path
