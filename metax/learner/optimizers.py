"""Optimizers metax adds to optax: the inner optimizer whose learning rates are meta-parameters
(Meta-SGD, MAML++'s LSLR), an outer optimizer per group of meta-parameters, and the two optax
combinators gin cannot call directly (``chain`` takes ``*args``; ``inject_hyperparams`` returns
a factory)."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax

from metax.meta_models.learned_rates import RATES_KEY
from metax.types import Array, Params


class LearnedSgdState(NamedTuple):
    """count: int32 scalar, the number of steps taken (selects per-step rates)."""

    count: Array  # type: ignore[assignment]  # As optax names its states' counters.


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
        structure: Any = jax.tree.structure(rates)
        if structure != jax.tree.structure(updates):
            raise ValueError(
                f"meta_params[{self.key!r}] must mirror the task parameters: got structure "
                f"{jax.tree.structure(rates)} for parameters {jax.tree.structure(updates)}."
            )

        def step(g, r):
            # jnp: the rates may be host (numpy) arrays, indexed by a traced count.
            rate = jnp.asarray(r)[jnp.minimum(state.count, r.shape[0] - 1)]
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


DEFAULT_GROUP = "default"


@gin.register(module="metax.learner")
def per_key_optimizer(
    default: optax.GradientTransformation,
    by_key: Mapping[str, optax.GradientTransformation],
) -> optax.GradientTransformation:
    """``by_key[k]`` updates the meta-parameters ``meta_params[k]`` (top-level keys), ``default``
    all others (`optax.multi_transform`). E.g. learned inner rates with a smaller outer step
    than the initialization: ``per_key_optimizer(optax.adam(1e-3), {"lr": optax.adam(1e-4)})``
    (MAML++'s LSLR diverged on sinusoid with one Adam 1e-3 for both: README)."""
    if DEFAULT_GROUP in by_key:
        raise ValueError(f"per_key_optimizer by_key cannot use the key {DEFAULT_GROUP!r}.")

    def labels(meta_params):
        return {k: (k if k in by_key else DEFAULT_GROUP) for k in meta_params}

    return optax.multi_transform({DEFAULT_GROUP: default, **by_key}, labels)


@gin.register(module="metax.learner")
def chain(transforms: Sequence[optax.GradientTransformation]) -> optax.GradientTransformation:
    """``optax.chain(*transforms)``: e.g. clipping, then Adam. In gin:
    ``chain.transforms = [@optax.clip_by_global_norm(), @optax.adam()]``."""
    return optax.chain(*transforms)


@gin.register(module="metax.learner")
def inject_hyperparams(
    optimizer: Callable[..., optax.GradientTransformation], **hyperparams
) -> optax.GradientTransformation:
    """``optax.inject_hyperparams(optimizer)(**hyperparams)``: the hyperparameters (numbers,
    or schedules of the step count) live in the optimizer's state, where the training loop
    reads the learning rate and logs it (``train/outer/learning_rate``). In gin:
    ``inject_hyperparams.optimizer = @optax.adam`` (the factory, no parentheses) and
    ``inject_hyperparams.learning_rate = @optax.cosine_decay_schedule()``."""
    return optax.inject_hyperparams(optimizer)(**hyperparams)


def injected_learning_rates(opt_state) -> dict[str, Array]:
    """The current ``learning_rate`` of each `optax.inject_hyperparams` optimizer found in
    ``opt_state``, as metrics: ``{"outer/learning_rate": scalar}`` for one, numbered
    (``outer/learning_rate_<i>``, in tree order) for several, empty for none."""

    def injected(x):
        return isinstance(x, optax.InjectHyperparamsState | optax.InjectStatefulHyperparamsState)

    rates = [
        state.hyperparams["learning_rate"]
        for state in jax.tree.leaves(opt_state, is_leaf=injected)
        if injected(state) and "learning_rate" in state.hyperparams
    ]
    if len(rates) == 1:
        return {"outer/learning_rate": jnp.asarray(rates[0], jnp.float32)}
    return {f"outer/learning_rate_{i}": jnp.asarray(r, jnp.float32) for i, r in enumerate(rates)}
