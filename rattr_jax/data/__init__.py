"""Datasets as arrays (float32 in [0, 1], NHWC images, int labels), in memory or memory-mapped
(`load_dataset(..., lazy=True)`: `LazyRows`, read on demand)."""

from rattr_jax.data._datasets import batches
from rattr_jax.data._datasets import DATA_DIR_ENV
from rattr_jax.data._datasets import Dataset
from rattr_jax.data._datasets import DATASETS
from rattr_jax.data._datasets import load_dataset
from rattr_jax.data._datasets import network_available
from rattr_jax.data._lazy import DATA_CACHE_ENV
from rattr_jax.data._lazy import LazyRows
from rattr_jax.data._lazy import take_rows

__all__ = ["batches", "DATA_CACHE_ENV", "DATA_DIR_ENV", "Dataset", "DATASETS", "LazyRows",
           "load_dataset", "network_available", "take_rows"]
