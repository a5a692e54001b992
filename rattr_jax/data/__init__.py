"""Datasets as arrays (float32 in [0, 1], NHWC images, int labels)."""

from rattr_jax.data._datasets import batches
from rattr_jax.data._datasets import DATA_DIR_ENV
from rattr_jax.data._datasets import Dataset
from rattr_jax.data._datasets import DATASETS
from rattr_jax.data._datasets import load_dataset
from rattr_jax.data._datasets import network_available

__all__ = ["batches", "DATA_DIR_ENV", "Dataset", "DATASETS", "load_dataset",
           "network_available"]
