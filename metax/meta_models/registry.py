"""The registry of meta-models: each registers once, with a small example, and the
compatibility table, the docs' tables and the tests' parametrization are derived from it.

    @register_meta_model(example=lambda: my_meta_model(nn.mlp([4], 1)))
    def my_meta_model(model, ...) -> MetaModel: ...

registers ``my_meta_model`` with gin too (as ``metax.meta_models.my_meta_model`` for metax's
own, under its module's name otherwise).
"""

import dataclasses
from collections.abc import Callable

import gin
import jax.numpy as jnp

from metax import nn
from metax.meta_models.base import MetaModel


@dataclasses.dataclass(frozen=True)
class MetaModelEntry:
    """A registered meta-model.

    Attributes:
      name: the factory's name.
      factory: the factory, ``factory(...) -> MetaModel``.
      label: its column in the compatibility table.
      example: ``example() -> MetaModel``: the factory on a tiny network for 1-D regression
        tasks (inputs and targets of shape ``(n, 1)``).
      regularized_example: the same with the option that pulls task parameters towards their
        initialization (``reg_strength``), where the factory has one; else None.
    """

    name: str
    factory: Callable[..., MetaModel]
    label: str
    example: Callable[[], MetaModel]
    regularized_example: Callable[[], MetaModel] | None = None


META_MODELS: dict[str, MetaModelEntry] = {}


def tiny_mlp(out_features: int = 1, activate_final: bool = False) -> nn.Model:
    """The examples' network: one hidden layer of 4 tanh units (smooth, so that sharded and
    unsharded meta-steps agree to rounding)."""
    return nn.mlp([4], out_features, activation=jnp.tanh, activate_final=activate_final)


def _gin_module(factory: Callable, package: str) -> str:
    module = factory.__module__
    return package if module.startswith(package + ".") else module


def register_meta_model(
    *,
    example: Callable[[], MetaModel],
    regularized_example: Callable[[], MetaModel] | None = None,
    label: str | None = None,
):
    """Registers a meta-model factory (a decorator): with gin, and in `META_MODELS` with its
    examples (see `MetaModelEntry`; ``label`` defaults to the factory's name)."""

    def register(factory):
        name = factory.__name__
        gin.register(factory, module=_gin_module(factory, "metax.meta_models"))
        META_MODELS[name] = MetaModelEntry(
            name, factory, label or name, example, regularized_example
        )
        return factory

    return register
