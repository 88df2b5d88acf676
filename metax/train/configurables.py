"""Registers the library's factories and the third-party callables that gin files reference.

Importing this module makes every metax factory, every public function of optax
(``@optax.<name>``: optimizers, transforms, schedules) and ``@jax.nn.<name>`` activations
available to gin; it has no other effect (registration leaves the functions unchanged, so
they behave the same when called from Python). Two optax combinators need metax's wrappers in
gin: ``metax.learner.chain`` and ``metax.learner.inject_hyperparams``.
"""

import contextlib
import inspect

import gin
import jax
import optax

import metax.data  # noqa: F401  (registers samplers)
import metax.energy  # noqa: F401
import metax.learner  # noqa: F401
import metax.meta_models  # noqa: F401
import metax.nn  # noqa: F401

# Gin cannot pass *args (optax.chain) or call the factory inject_hyperparams returns: those
# two are registered as metax.learner.chain and metax.learner.inject_hyperparams instead.
NOT_FROM_GIN = frozenset({"chain", "inject_hyperparams", "inject_stateful_hyperparams"})
OPTAX_NAMES = tuple(
    name
    for name in dir(optax)
    if not name.startswith("_")
    and name not in NOT_FROM_GIN
    and inspect.isfunction(getattr(optax, name))
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
