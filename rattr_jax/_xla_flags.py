"""rattr_jax's XLA:CPU flags, whether ``XLA_FLAGS`` puts convolutions on Eigen, and the heap pad.

One definition for `rattr_jax.configure_cpu` (which sets the flags and reports them) and
`rattr_jax.models._conv` (which picks its weight-gradient blocks by the first). Only the
standard library: it is read before JAX's backend starts.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Bytes that glibc's ``malloc`` keeps at the top of each heap when it trims
#: (``mallopt(M_TOP_PAD, ...)``), set by `rattr_jax.configure_cpu` with
#: ``retain_heap=True``. By default glibc gave the memory freed after every XLA:CPU
#: call back to the kernel, and the next call took page faults to touch it again:
#: 17,000 minor faults per MNIST CNN gradient-alignment step at batch 128, 1,750 with
#: this pad (step 103 -> 87 ms, same process otherwise). Peak memory is unchanged (the
#: pad keeps what was already in use; measured max RSS within 1%).
HEAP_TOP_PAD = 512 * 2**20
#: Blocks up to this size come from the heap, larger ones from ``mmap``
#: (``mallopt(M_MMAP_THRESHOLD, ...)``; 32 MiB is the most glibc accepts on 64-bit).
#: Setting the pad fixes glibc's otherwise adaptive threshold at its 128 KiB start,
#: which would send every larger block to ``mmap`` (and its page faults) again.
HEAP_MMAP_THRESHOLD = 32 * 2**20
#: At most this many blocks at a time come from ``mmap`` (``mallopt(M_MMAP_MAX, ...)``):
#: none, so that larger blocks come from the heap too and are reused. A block above the
#: threshold was otherwise mapped and unmapped around every call whenever the heap's
#: free top could not hold it, which depended on what else the process had allocated:
#: XLA:CPU's temporary buffer of one MNIST CNN Hessian-norm step at batch 128 is 96 MB,
#: and with a PyTorch peer in the same process some runs took 24,500 minor page faults per
#: step, every step (117-139 against 45-53 ms), others none (`benchmarks/retain_heap.py`).
HEAP_MMAP_MAX = 0
_M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -2, -3, -4  # glibc's <malloc.h>


def _glibc_mallopt():
  """glibc's ``mallopt`` (argument and result types set), or ``None`` off Linux / glibc."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only (musl's mallopt does nothing)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return mallopt


def heap_settings_supported() -> bool:
  """Whether `retain_heap` can apply here (Linux with glibc); changes nothing."""
  return _glibc_mallopt() is not None


def retain_heap(top_pad: int = HEAP_TOP_PAD, mmap_threshold: int = HEAP_MMAP_THRESHOLD,
                mmap_max: int | None = HEAP_MMAP_MAX) -> bool:
  """``mallopt`` the heap pad, the ``mmap`` threshold and (unless ``mmap_max`` is ``None``)
  the most ``mmap``-ed blocks, on Linux with glibc; whether all applied.

  Process-wide and immediate (they apply to later ``malloc``/``free`` calls); a no-op
  returning ``False`` on other platforms or C libraries.
  """
  mallopt = _glibc_mallopt()
  if mallopt is None:
    return False
  ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
  ok &= bool(mallopt(_M_TOP_PAD, int(top_pad)))
  if mmap_max is not None:
    ok &= bool(mallopt(_M_MMAP_MAX, int(mmap_max)))
  return ok


#: The XLA:CPU flag `rattr_jax.configure_cpu` adds with ``eigen_convolutions=True``.
EIGEN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

#: The option `rattr_jax.configure_cpu` adds with ``channel_vectorization=True``: XLA:CPU's
#: LLVM fully unrolls only loops of at most 8 iterations. Its default (a cost threshold)
#: fully unrolled the innermost loop of an elementwise fusion over 16 or 32 channels and then
#: vectorized the next loop out, across pixels 16 or 32 floats apart: eight scalar loads and
#: stores per vector (softplus-3 of ``[128, 28, 28, 16]`` with a scalar broadcast in it:
#: ``exp(3 z)`` 1.22 -> 0.44 ms, as fast as the same array flattened).
UNROLL_FLAG = "--xla_backend_extra_options=-unroll-full-max-count=8"


def convolutions_on_eigen() -> bool:
  """Whether ``XLA_FLAGS`` takes convolutions off XLA:CPU's YNNPACK fusions (onto Eigen).

  True when the last ``--xla_cpu_experimental_ynn_fusion_type=`` option is empty
  (every YNNPACK fusion off) or lists ``-individual_convolution`` (`EIGEN_CONV_FLAG`).
  XLA reads the flags when its CPU backend starts, so this is exact when they are set
  before the first JAX computation (as `rattr_jax.configure_cpu` requires).
  """
  value = None
  for token in os.environ.get("XLA_FLAGS", "").split():
    if token.startswith("--xla_cpu_experimental_ynn_fusion_type="):
      value = token.split("=", 1)[1]
  return value is not None and (value == "" or "-individual_convolution" in value.split(","))
