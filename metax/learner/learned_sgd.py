"""The inner optimizer whose learning rates are meta-parameters (Meta-SGD, MAML++'s LSLR)."""

from typing import NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax

from metax.meta_models.learned_rates import RATES_KEY
from metax.types import Array, Params


class LearnedSgdState(NamedTuple):
    """count: int32 scalar, the number of steps taken (selects per-step rates)."""

    count: Array


class _ReadsMetaParams:
    """An optax ``update`` that reads ``meta_params[key]``; ``meta_param_keys`` lets learners
    check, when they are built, that a meta-model's learned rates are read."""

    def __init__(self, key: str):
        self.key = key
        self.meta_param_keys = frozenset({key})

    def __call__(self, updates, state: LearnedSgdState, params=None, *, meta_params=None, **_):
        del params
        if meta_params is None or self.key not in meta_params:
            raise ValueError(
                f"learned_sgd reads its learning rates from meta_params[{self.key!r}], which "
                f"this meta-model does not have: wrap it with metax.meta_models.learned_rates(...)."
            )
        rates = meta_params[self.key]
        if jax.tree.structure(rates) != jax.tree.structure(updates):
            raise ValueError(
                f"meta_params[{self.key!r}] must mirror the task parameters: got structure "
                f"{jax.tree.structure(rates)} for parameters {jax.tree.structure(updates)}."
            )

        def step(g, r):
            rate = r[jnp.minimum(state.count, r.shape[0] - 1)]
            return (-rate * g).astype(g.dtype)

        return jax.tree.map(step, updates, rates), LearnedSgdState(state.count + 1)


@gin.register(module="metax.learner")
def learned_sgd(key: str = RATES_KEY) -> optax.GradientTransformationExtraArgs:
    """SGD with meta-learned rates: ``phi <- phi - r_k * grad``, ``r_k`` the rates of inner step
    ``k`` in ``meta_params[key]`` (`metax.meta_models.learned_rates`: leaves ``(K, *shape)`` or
    ``(K,)``; steps past K use the last). Use it as a learner's ``inner_optimizer``; it gets
    ``meta_params`` from the inner loop (optax's extra arguments)."""

    def init(params: Params) -> LearnedSgdState:
        del params
        return LearnedSgdState(jnp.zeros((), jnp.int32))

    return optax.GradientTransformationExtraArgs(init, _ReadsMetaParams(key))
