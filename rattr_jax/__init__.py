"""rattr_jax: robust attributions in JAX.

Explain a model, attack the explanation, measure its fragility, inspect the
Hessian geometry behind it, and train models whose explanations hold. Every
function is pure, jittable and vmappable.
"""

__version__ = "0.1.0"

import os as _os


class RattrDeprecationWarning(DeprecationWarning):
  """A deprecation of rattr_jax itself (the test suite turns these into errors)."""


from rattr_jax._xla_flags import (EIGEN_CONV_FLAG, HEAP_MMAP_MAX,  # noqa: E402
                                  HEAP_MMAP_THRESHOLD, HEAP_TOP_PAD, UNROLL_FLAG)
from rattr_jax._xla_flags import retain_heap as _retain_heap  # noqa: E402
from rattr_jax._xla_flags import convolutions_on_eigen as _convolutions_on_eigen  # noqa: E402


def configure_cpu(*, inline_dispatch: bool = True, eigen_convolutions: bool = True,
                  channel_vectorization: bool = True, retain_heap: bool = True) -> dict:
  """Opt-in XLA:CPU settings that make rattr_jax's programs faster on CPU.

  Nothing is changed on import; the ``rattr`` command line and the benchmarks
  call this first. It sets only what was measured to help:

  * ``inline_dispatch``: runs each CPU computation in the calling thread
    (``jax_cpu_enable_async_dispatch=False``) instead of handing it to a
    worker thread and waiting for it. Measured on 2 cores
    (``benchmarks/attribution_throughput.py``): MLP gradient at batch 1,
    115 -> 69 us per call; IG 211 -> 136 us; CNN gradient at batch 16, 4.3 ->
    2.7 ms; large programs (IG, SmoothGrad, attacks, training epochs on a
    CNN) unchanged. The price: Python no longer runs ahead of the CPU while a
    computation is in flight.
  * ``eigen_convolutions``: appends `EIGEN_CONV_FLAG` to ``XLA_FLAGS``, which
    takes convolutions (only them: dots and elementwise fusions keep
    YNNPACK) from XLA:CPU's YNNPACK library to its Eigen kernels. YNNPACK
    ran every convolution on one thread (the same time with one core as with
    two), Eigen uses all of them: on 2 cores the CIFAR LeNet's 3x3
    convolutions at batch 128 went 27 -> 15 ms (forward) and 26 -> 14 ms
    (input gradient), and its forward pass 115 -> 84 ms; at batch 32 (the
    default `rattr train` epoch) nothing changed (0.65 s either way,
    `benchmarks/training_cost.py`). It changes float rounding of every
    convolution (results differ at ~1e-6 relative). The older flag value that
    turned *all* YNNPACK fusions off (``=`` empty) made fused training 10x
    slower and is not used. Skipped when ``XLA_FLAGS`` already names
    ``xla_cpu_experimental_ynn_fusion_type``.
  * ``channel_vectorization``: appends `UNROLL_FLAG` to ``XLA_FLAGS``, an LLVM
    option: XLA:CPU's code generator fully unrolls only loops of at most 8
    iterations. Without it, an elementwise fusion over 16 or 32 channels (the
    small conv nets' activations and their derivatives, when a bias or a
    constant is broadcast in them) had its channel loop unrolled and was
    vectorized across pixels instead, with one scalar load per lane, 2.8-3.5x
    slower per fusion. Whole steps, alternating processes, batch 128
    (README, "Speed"): MNIST CNN CE 1.15x, activation sensitivity 1.12x,
    gradient alignment 1.05-1.1x; CIFAR LeNet (mostly convolution time) within
    noise to 1.03x; CNN SmoothGrad at batch 1 1.7x; MLPs unchanged. Skipped
    when ``XLA_FLAGS`` already names ``xla_backend_extra_options``.
  * ``retain_heap``: glibc's ``malloc`` keeps `HEAP_TOP_PAD` bytes (512 MiB) at
    the top of its heaps when it trims (``mallopt(M_TOP_PAD)``) and takes every
    block from the heap, none from ``mmap`` (`HEAP_MMAP_THRESHOLD`, 32 MiB, and
    `HEAP_MMAP_MAX`, 0; Linux with glibc only), instead of giving the memory
    freed after each XLA:CPU call back to the kernel and faulting it in again on
    the next call. (Without ``HEAP_MMAP_MAX`` a block above 32 MiB, such as
    XLA's 96 MB temporary buffer of an MNIST CNN Hessian-norm step at batch 128,
    was mapped and unmapped around every call whenever the heap's free top could
    not hold it: 24,500 page faults per step, 2.5x the time, in some runs.) Both settings in one
    process, alternating (`benchmarks/retain_heap.py`, batch 128, single /
    fused steps, without / with): MNIST CNN CE 1.79x / 1.33x (page faults per
    step 7,300 -> 110), gradient alignment 1.26x / 1.20x, Hessian norm 1.13x /
    1.26x, PGD-AT 1.07x / 1.05x; CIFAR LeNet 1.01-1.06x. Peak memory the same.
    Process-wide and applied at any time; a PyTorch peer in the same
    process gains too (its MNIST CNN CE step 21.6 -> 10.4 ms).

  The first three are read when the CPU client starts, so they apply only if no
  backend has started yet and neither ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` (JAX's
  own variable, for the first) nor ``RATTR_JAX_NO_XLA_FLAGS`` (for all four) is
  set. GPU/TPU are not concerned.

  Returns:
    ``{"inline_dispatch": bool, "eigen_convolutions": bool,
    "channel_vectorization": bool, "retain_heap": bool}``: whether async CPU
    dispatch is off, whether ``XLA_FLAGS`` puts convolutions on Eigen
    (`EIGEN_CONV_FLAG`, or every YNNPACK fusion off), whether it holds
    `UNROLL_FLAG`, afterwards, and whether this call set the heap pad.
  """
  import jax
  opt_out = bool(_os.environ.get("RATTR_JAX_NO_XLA_FLAGS"))
  started = _backend_started()
  current = not jax.config.read("jax_cpu_enable_async_dispatch")
  if (inline_dispatch and not current and not opt_out
      and "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in _os.environ and not started):
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    current = True
  flags = _os.environ.get("XLA_FLAGS", "")
  if (eigen_convolutions and not opt_out and not started
      and "xla_cpu_experimental_ynn_fusion_type" not in flags):
    flags = _os.environ["XLA_FLAGS"] = (flags + " " + EIGEN_CONV_FLAG).strip()
  if (channel_vectorization and not opt_out and not started
      and "xla_backend_extra_options" not in flags):
    _os.environ["XLA_FLAGS"] = (flags + " " + UNROLL_FLAG).strip()
  eigen = _convolutions_on_eigen()
  unroll = UNROLL_FLAG in _os.environ.get("XLA_FLAGS", "").split()
  padded = bool(retain_heap and not opt_out and _retain_heap())
  return {"inline_dispatch": current, "eigen_convolutions": eigen,
          "channel_vectorization": unroll, "retain_heap": padded}


def enable_compilation_cache(path: str, *, min_compile_time_secs: float = 0.5,
                             min_entry_size_bytes: int = 0) -> str:
  """Turns on JAX's persistent compilation cache in directory ``path``.

  A re-run of the same programs (same shapes, dtypes, flags and jax version)
  then loads the compiled executables from disk instead of compiling again.
  Programs that compiled in under ``min_compile_time_secs`` are not written
  (loading them would save little); ``min_entry_size_bytes`` (0: any size)
  is the smallest executable kept. Safe to call at any time; it applies to
  programs compiled afterwards.

  While the cache is on, convolutions are lowered with XLA's own kernels, not
  oneDNN's (`rattr_jax.models.persistent_cache_enabled`): jaxlib 0.10.2's XLA:CPU
  cannot serialize the oneDNN custom call (``std::bad_alloc``, and once a crash). So
  that no program lowered before with oneDNN is compiled again under the cache, this
  drops JAX's in-memory caches (`jax.clear_caches`): programs compile again on their
  next call. Measured on the quick study (2 cores,
  `benchmarks/results/compile_cache.json`): cold 88-91 s; a second study on the same
  cache 52 s, no program compiled. A study that wants oneDNN (``[compute] onednn``)
  runs without the cache (`rattr study` says so).

  Args:
    path: cache directory (created if missing).
    min_compile_time_secs: ``jax_persistent_cache_min_compile_time_secs``.
    min_entry_size_bytes: ``jax_persistent_cache_min_entry_size_bytes``.

  Returns:
    The absolute cache directory.
  """
  if not isinstance(path, (str, _os.PathLike)) or not str(path):
    raise ValueError(f"`path` must be a directory path; got {path!r}.")
  if not min_compile_time_secs >= 0:
    raise ValueError(f"`min_compile_time_secs` must be >= 0; got {min_compile_time_secs!r}.")
  if not (isinstance(min_entry_size_bytes, int) and min_entry_size_bytes >= 0):
    raise ValueError(f"`min_entry_size_bytes` must be an integer >= 0; got {min_entry_size_bytes!r}.")
  import jax
  path = _os.path.abspath(_os.fspath(path))
  _os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
  # jax remembers "is the cache initialised" from its first use; reset it for a new directory
  from jax.experimental.compilation_cache import compilation_cache as _cc
  _cc.reset_cache()
  jax.clear_caches()  # lowerings made before (possibly with oneDNN) are made again
  return path


def _backend_started() -> bool:
  """Whether a JAX backend has been obtained in this process (its flags are then fixed).

  Public API only: every computation, ``jax.devices()`` and ``jax.default_backend()``
  go through `jax.extend.backend.get_backend`, which caches the backends it returns.
  """
  from jax.extend import backend as _backend
  info = getattr(_backend.get_backend, "cache_info", None)
  return bool(info is not None and info().currsize)


# Subpackages are imported on first use (``rattr_jax.metrics``, ``from rattr_jax import
# metrics`` both work), so ``import rattr_jax`` -- and ``rattr --help`` -- does not
# import JAX (measured: ``rattr --help`` 6.7-10.4 s -> 0.13-0.2 s at load ~7 on 2 cores).
_SUBPACKAGES = ("attacks", "attribution", "core", "curvature", "data", "distributed",
                "explainers", "influence", "maps", "metrics", "models", "regularizers",
                "senn", "study", "testing", "training", "viz")


def __getattr__(name):
  if name in _SUBPACKAGES:
    import importlib
    module = importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SUBPACKAGES))


__all__ = [
    "attacks", "attribution", "curvature", "influence", "maps", "metrics", "models",
    "regularizers", "senn", "training", "configure_cpu", "enable_compilation_cache",
    "RattrDeprecationWarning",
    "__version__",
]
