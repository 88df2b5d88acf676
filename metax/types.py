"""Types shared across metax: the array and pytree aliases every layer uses.

The Protocols of the pure functions models, meta-models and learners are made of live beside
the types they describe: `metax.meta_models.base` (``ApplyFn``, ``EnergyFn``) and
`metax.learner.protocols` (``InitFn``, ``MetaStepFn``, ``EvaluateFn``, ``AdaptFn``).
"""

from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # A pytree of arrays, usually a nested dict with named keys.
State = Any  # A pytree of non-trainable arrays (e.g. BatchNorm statistics); may be {}.
Metrics = dict[str, Array]  # Flat: metric name -> scalar (or per-task vector) array.
