"""Registers the library's factories and the third-party callables that gin files reference.

Importing this module makes every metax factory and ``@optax.<name>`` / ``@jax.nn.<name>``
available to gin; it has no other effect (registration leaves the functions unchanged, so
they behave the same when called from Python).
"""

import contextlib

import gin
import jax
import optax

import metax.data  # noqa: F401  (registers samplers)
import metax.data.datasets  # noqa: F401
import metax.data.omniglot  # noqa: F401
import metax.energy  # noqa: F401
import metax.learner  # noqa: F401
import metax.meta_models  # noqa: F401
import metax.nn  # noqa: F401

OPTAX_NAMES = (
    "adabelief",
    "adafactor",
    "adagrad",
    "adam",
    "adamw",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "lamb",
    "lion",
    "linear_schedule",
    "noisy_sgd",
    "rmsprop",
    "scale",
    "sgd",
    "warmup_cosine_decay_schedule",
    "add_decayed_weights",
)
ACTIVATION_NAMES = ("relu", "gelu", "tanh", "sigmoid", "silu", "softplus", "elu", "leaky_relu")


def _register_once(fn, module: str) -> None:
    # Already registered (e.g. after a module reload) is harmless.
    with contextlib.suppress(ValueError):
        gin.register(fn, module=module)


for _name in OPTAX_NAMES:
    _register_once(getattr(optax, _name), "optax")
for _name in ACTIVATION_NAMES:
    _register_once(getattr(jax.nn, _name), "jax.nn")
