"""Type aliases shared across metax (documentation only; nothing here is enforced)."""

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # A pytree of arrays, usually a nested dict with named keys.
State = Any  # A pytree of non-trainable arrays (e.g. BatchNorm statistics); may be {}.
Metrics = dict[str, Array]  # Flat: metric name -> scalar (or per-task vector) array.
