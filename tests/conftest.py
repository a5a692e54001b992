"""Shared pytest setup: CPU, deterministic, x64 available per test via `enable_x64`."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _compilation_cache_restored():
  """A test that turns on JAX's persistent compilation cache in this process (`rattr study`
  run in-process) leaves it off again, so that the tests after it lower and compile as
  they would alone (with the cache on, convolutions are not oneDNN's)."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {n: getattr(jax.config, n) for n in names}
  yield
  if any(getattr(jax.config, n) != v for n, v in before.items()):
    for n, v in before.items():
      jax.config.update(n, v)
    from jax.experimental.compilation_cache import compilation_cache
    compilation_cache.reset_cache()
    jax.clear_caches()


@pytest.fixture
def x64():
  """Runs a test with 64-bit floats enabled (finite differences, closed forms)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def square_without_jvp():
  """``z -> z * z`` as a `jax.custom_vjp` whose forward rule calls itself (as the fast
  convolution's did before it became a primitive): no forward-mode derivative, and
  `jax.jvp` of `jax.grad` through it fails when differentiated again."""
  @jax.custom_vjp
  def square(z):
    return z * z
  square.defvjp(lambda z: (square(z), z), lambda z, g: (2 * z * g,))
  return square


@pytest.fixture(scope="session")
def trained_cnn():
  """``(model, dataset)``: the small MNIST CNN trained on the embedded dataset."""
  from rattr_jax.testing import trained_mnist_cnn
  return trained_mnist_cnn()
