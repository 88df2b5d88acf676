"""The Protocols of a learner's pure functions (`metax.learner.Learner`'s fields): documentation
and static type checking; nothing is enforced at run time."""

from collections.abc import Hashable
from typing import Any, Protocol

from metax.data.base import Dataset, MetaBatch
from metax.types import Metrics, Params, PRNGKey, State


class InitFn(Protocol):
    """A learner's ``init(rng, meta_batch) -> MetaState`` (``meta_batch`` with task axis)."""

    def __call__(self, rng: PRNGKey, meta_batch: MetaBatch) -> Any: ...


class MetaStepFn(Protocol):
    """A learner's ``meta_step(state, meta_batch, rng) -> (state, metrics)``: one outer update;
    ``metrics`` are flat scalars."""

    def __call__(self, state: Any, meta_batch: MetaBatch, rng: PRNGKey) -> tuple[Any, Metrics]: ...


class EvaluateFn(Protocol):
    """A learner's ``evaluate(state, meta_batch, rng, setting) -> metrics``, each of shape
    ``(tasks,)``; ``setting`` is static (for learners with an inner loop: inner steps)."""

    def __call__(
        self, state: Any, meta_batch: MetaBatch, rng: PRNGKey, setting: Hashable, /
    ) -> Metrics: ...


class AdaptFn(Protocol):
    """A learner's ``adapt(state, support, rng, num_inner_steps) -> (params, model_state)`` for
    one task's support `Dataset` (no task axis)."""

    def __call__(
        self, state: Any, support: Dataset, rng: PRNGKey, num_inner_steps: int
    ) -> tuple[Params, State]: ...
