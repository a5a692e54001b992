"""The XLA:CPU convolution flag and whether ``XLA_FLAGS`` puts convolutions on Eigen.

One definition for `rattr_jax.configure_cpu` (which sets the flag and reports it) and
`rattr_jax.models._conv` (which picks its weight-gradient blocks by it). Only `os`: it
is read before JAX's backend starts.
"""

from __future__ import annotations

import os

#: The XLA:CPU flag `rattr_jax.configure_cpu` adds with ``eigen_convolutions=True``.
EIGEN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


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
