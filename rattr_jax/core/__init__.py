"""The shared core of rattr_jax: what every capability package builds on.

Public names only; capability packages (attribution, attacks, metrics,
regularizers, ...) import these with ``from rattr_jax.core import ...`` and
never reach into each other's private modules.

* the explainer protocol: `Explainer`, `BoundExplainer`, `Precomputed`,
  `precomputed`, `check_explainer`;
* the threat model: `ThreatModel` (radius in input units, norm, valid box)
  and its `project`;
* targets: `prepare`, `target_logits`, `target_gradient`, `predicted_label`;
* input checks: `check_batch`, `check_target`, `check_key`, ... (they raise a
  one-line ``ValueError`` naming the argument, before tracing);
* chunking: `chunk_examples`, `chunk_indices` (the ``chunk_size`` knob);
* keys: `example_keys`, `call_key`, `check_key_or_keys`;
* maps: `reduce_channels`, `normalize_map`, `to_map`, `map_center_of_mass`.
"""

from rattr_jax._jit import jit_with_callables
from rattr_jax._validation import check_baseline
from rattr_jax._validation import check_baseline_shape
from rattr_jax._validation import check_batch
from rattr_jax._validation import check_choice
from rattr_jax._validation import check_image_batch
from rattr_jax._validation import check_key
from rattr_jax._validation import check_nonnegative
from rattr_jax._validation import check_optional_positive_int
from rattr_jax._validation import check_positive
from rattr_jax._validation import check_positive_int
from rattr_jax._validation import check_same_shape
from rattr_jax._validation import check_target
from rattr_jax._validation import eval_shape
from rattr_jax._validation import is_concrete
from rattr_jax._validation import num_classes_of
from rattr_jax.core._chunks import chunk_examples
from rattr_jax.core._chunks import chunk_indices
from rattr_jax.core._explainer import BoundExplainer
from rattr_jax.core._explainer import check_explainer
from rattr_jax.core._explainer import Explainer
from rattr_jax.core._explainer import is_precomputed
from rattr_jax.core._explainer import Precomputed
from rattr_jax.core._explainer import precomputed
from rattr_jax.core._keys import as_typed_key
from rattr_jax.core._keys import call_key
from rattr_jax.core._keys import check_key_or_keys
from rattr_jax.core._keys import check_optional_key
from rattr_jax.core._keys import example_keys
from rattr_jax.core._maps import map_center_of_mass
from rattr_jax.core._maps import map_shape_of
from rattr_jax.core._maps import NORMALIZATIONS
from rattr_jax.core._maps import normalize_map
from rattr_jax.core._maps import pearson_rows
from rattr_jax.core._maps import reduce_channels
from rattr_jax.core._maps import REDUCTIONS
from rattr_jax.core._maps import to_map
from rattr_jax.core._targets import predicted_label
from rattr_jax.core._targets import prepare
from rattr_jax.core._targets import target_gradient
from rattr_jax.core._targets import target_logits
from rattr_jax.core._threat import check_epsilon
from rattr_jax.core._threat import check_input_range
from rattr_jax.core._threat import NORMS
from rattr_jax.core._threat import ThreatModel

__all__ = [
    "jit_with_callables", "check_baseline", "check_baseline_shape", "check_batch",
    "check_choice", "check_image_batch", "check_key", "check_nonnegative",
    "check_optional_positive_int", "check_positive", "check_positive_int", "check_same_shape",
    "check_target", "eval_shape", "is_concrete", "num_classes_of", "chunk_examples",
    "chunk_indices", "BoundExplainer", "check_explainer", "Explainer", "is_precomputed",
    "Precomputed", "precomputed", "as_typed_key", "call_key", "check_key_or_keys",
    "check_optional_key", "example_keys", "map_center_of_mass", "map_shape_of",
    "NORMALIZATIONS", "normalize_map", "pearson_rows", "reduce_channels", "REDUCTIONS", "to_map",
    "predicted_label", "prepare", "target_gradient", "target_logits", "check_epsilon",
    "check_input_range", "NORMS", "ThreatModel",
]
