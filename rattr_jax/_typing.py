"""Type aliases shared across rattr_jax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import jax
from jaxtyping import Array, Float, Int

#: ``fn(x) -> logits``: maps a batch ``[B, *F]`` to logits ``[B, C]``.
LogitFn = Callable[[Float[Array, "B ..."]], Float[Array, "B C"]]
#: An int, or an int array ``[B]`` of per-example classes.
Target = Union[int, Int[Array, "B"], jax.Array]
#: A PRNG key.
PRNGKey = jax.Array
