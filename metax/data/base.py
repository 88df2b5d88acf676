"""Task batches as plain data, and samplers that draw them on device from a PRNG key."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metax.types import Array, PRNGKey


class Dataset(NamedTuple):
    """Samples of one task, or of a batch of tasks with a leading task axis.

    x: ``([tasks,] n, *input_shape)``; y: ``([tasks,] n, *target_shape)``;
    info: dict of per-task arrays, e.g. ``{"task_id": ([tasks,])}``; may be empty.
    """

    x: Array
    y: Array
    info: dict


class MetaBatch(NamedTuple):
    """The support set (adapted on) and the query set (scored) of one task, or of a batch of
    tasks with a leading task axis.

    ``train`` and ``test`` are the old names of ``support`` and ``query``, kept as read-only
    aliases for one release.
    """

    support: Dataset
    query: Dataset

    @property
    def train(self) -> Dataset:
        """Deprecated alias of ``support``."""
        return self.support

    @property
    def test(self) -> Dataset:
        """Deprecated alias of ``query``."""
        return self.query


class TaskSampler(NamedTuple):
    """``sample_task(rng) -> MetaBatch`` of a single task (no task axis); pure and jit-able.

    Regression samplers also give ``target_fn(rng, x) -> y``: the ground truth of the task
    that ``sample_task(rng)`` draws, at any inputs ``x (n, d)`` (for figures); None otherwise.
    """

    sample_task: Callable[[PRNGKey], MetaBatch]
    target_fn: Callable[[PRNGKey, Array], Array] | None = None


def sample_meta_batch(
    sampler: TaskSampler, rng: PRNGKey, num_tasks: int, first_task: int | Array = 0
) -> MetaBatch:
    """Draws tasks ``first_task .. first_task + num_tasks - 1`` of the stream ``rng``.

    Task ``i`` is drawn from ``fold_in(rng, i)``, so the global meta-batch is the same however
    the task axis is later split over devices or hosts. Returns a MetaBatch with a leading
    task axis of size ``num_tasks``.
    """
    return jax.vmap(sampler.sample_task)(task_keys(rng, num_tasks, first_task))


def task_keys(rng: PRNGKey, num_tasks: int, first_task: int | Array = 0) -> Array:
    """One key per task, task ``i`` (``first_task <= i < first_task + num_tasks``) from
    ``fold_in(rng, i)``: independent of how tasks are split over devices. The one place
    task keys are made (sampling, meta-steps, evaluation)."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(first_task + jnp.arange(num_tasks))


def num_tasks(batch: MetaBatch) -> int:
    """Size of the leading task axis of a batched MetaBatch."""
    return batch.support.x.shape[0]
