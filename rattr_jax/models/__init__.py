"""Flax NNX models with swappable activations, and their pure functions."""

from rattr_jax.models._activation import ACTIVATIONS
from rattr_jax.models._activation import Activation
from rattr_jax.models._activation import as_activation
from rattr_jax.models._conv import conv2d
from rattr_jax.models._conv import CONV_IMPLS
from rattr_jax.models._conv import onednn_available
from rattr_jax.models._conv import onednn_convolutions
from rattr_jax.models._conv import onednn_in_use
from rattr_jax.models._conv import persistent_cache_enabled
from rattr_jax.models._features import call_with_features
from rattr_jax.models._features import check_layers
from rattr_jax.models._features import feature_fn
from rattr_jax.models._features import layer_names
from rattr_jax.models._functional import as_fn
from rattr_jax.models._functional import functional
from rattr_jax.models._functional import surrogate_fn
from rattr_jax.models._functional import view
from rattr_jax.models._layers import Conv2D
from rattr_jax.models._layers import max_pool2
from rattr_jax.models._zoo import BasicBlock
from rattr_jax.models._zoo import CifarLeNet
from rattr_jax.models._zoo import create_model
from rattr_jax.models._zoo import MLP
from rattr_jax.models._zoo import MnistCNN
from rattr_jax.models._zoo import MODELS
from rattr_jax.models._zoo import ResNet18
from rattr_jax.models._zoo import WIDTHS

__all__ = [
    "ACTIVATIONS", "Activation", "as_activation", "conv2d", "CONV_IMPLS", "onednn_available",
    "onednn_convolutions", "onednn_in_use", "persistent_cache_enabled", "as_fn",
    "functional", "surrogate_fn", "Conv2D", "max_pool2", "BasicBlock", "CifarLeNet",
    "create_model", "MLP", "MnistCNN", "MODELS", "ResNet18", "feature_fn", "call_with_features", "layer_names",
    "check_layers", "view",
    "WIDTHS",
]

