"""rattr_jax's XLA:CPU flags, and whether ``XLA_FLAGS`` puts convolutions on Eigen.

One definition for `rattr_jax.configure_cpu` (which sets the flags and reports them) and
`rattr_jax.models._conv` (which picks its weight-gradient blocks by the first). Only `os`:
it is read before JAX's backend starts.
"""

from __future__ import annotations

import os

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
