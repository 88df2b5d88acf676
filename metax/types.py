"""Types shared across metax: array aliases and Protocols for the pure functions that make up
models, meta-models and learners (documentation and type checking; nothing is enforced at run
time)."""

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol

import jax

if TYPE_CHECKING:
    from metax.data.base import Dataset, MetaBatch

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # A pytree of arrays, usually a nested dict with named keys.
State = Any  # A pytree of non-trainable arrays (e.g. BatchNorm statistics); may be {}.
Metrics = dict[str, Array]  # Flat: metric name -> scalar (or per-task vector) array.


class ApplyFn(Protocol):
    """A meta-model's ``apply(meta_params, params, state, rng, inputs, *, is_training) ->
    (outputs, state)``; ``inputs`` is ``(n, *input_shape)``."""

    def __call__(
        self,
        meta_params: Params,
        params: Params,
        state: State,
        rng: PRNGKey,
        inputs: Array,
        *,
        is_training: bool = True,
    ) -> tuple[Array, State]: ...


class EnergyFn(Protocol):
    """``energy(meta_params, params, state, rng, data) -> (loss, (state, metrics))`` of one task
    (``data`` without task axis); ``loss`` is a scalar."""

    def __call__(
        self, meta_params: Params, params: Params, state: State, rng: PRNGKey, data: "Dataset"
    ) -> tuple[Array, tuple[State, Metrics]]: ...


class InitFn(Protocol):
    """A learner's ``init(rng, meta_batch) -> MetaState`` (``meta_batch`` with task axis)."""

    def __call__(self, rng: PRNGKey, meta_batch: "MetaBatch") -> Any: ...


class MetaStepFn(Protocol):
    """A learner's ``meta_step(state, meta_batch, rng) -> (state, metrics)``: one outer update;
    ``metrics`` are flat scalars."""

    def __call__(
        self, state: Any, meta_batch: "MetaBatch", rng: PRNGKey
    ) -> tuple[Any, Metrics]: ...


class EvaluateFn(Protocol):
    """A learner's ``evaluate(state, meta_batch, rng, setting) -> metrics``, each of shape
    ``(tasks,)``; ``setting`` is static (for learners with an inner loop: inner steps)."""

    def __call__(
        self, state: Any, meta_batch: "MetaBatch", rng: PRNGKey, setting: Hashable
    ) -> Metrics: ...


class AdaptFn(Protocol):
    """A learner's ``adapt(state, support, rng, num_inner_steps) -> (params, model_state)`` for
    one task's support `Dataset` (no task axis)."""

    def __call__(
        self, state: Any, support: "Dataset", rng: PRNGKey, num_inner_steps: int
    ) -> tuple[Params, State]: ...
