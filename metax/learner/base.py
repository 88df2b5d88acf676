"""The learner interface (outer loop) and its state, which is also the checkpoint."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metax.data.base import MetaBatch
from metax.learner.inner import (
    TaskChunk,
    make_adapt,
    make_evaluate,
    mean_over_tasks,
    resolve_task_chunk,
)
from metax.module.base import MetaModel
from metax.types import Array, Metrics, Params, PRNGKey, State


class MetaState(NamedTuple):
    """Everything a learner carries between meta-steps; checkpointing it resumes a run.

    step: int32 scalar, number of meta-steps taken. meta_params: the meta-model's meta-learned
    parameters. model_state: the meta-model's non-gradient state (e.g. BatchNorm statistics).
    opt_state: the outer optimizer's state.
    """

    step: Array
    meta_params: Params
    model_state: State
    opt_state: Any


class Learner(NamedTuple):
    """An outer loop as pure functions (jit them; all are free of Python side effects).

    * ``init(rng, meta_batch) -> MetaState``: ``meta_batch`` (with task axis) gives shapes.
    * ``meta_step(state, meta_batch, rng) -> (state, metrics)``: one outer update on a batch of
      tasks; metrics is a flat dict of scalars (averages over the task axis).
    * ``evaluate(state, meta_batch, rng, num_inner_steps) -> metrics``: adapts each task with
      ``num_inner_steps`` (a static int) inner steps and returns per-task metrics of the query
      set, each of shape ``(tasks,)``.
    * ``meta_model``: the `MetaModel` it meta-learns (lets the training loop check, before
      compiling, that the model fits the tasks' data); may be None for a custom learner.
    * ``adapt(state, support, rng, num_inner_steps) -> (params, model_state)``: one task's
      adapted parameters from its support `Dataset` (no task axis), as ``evaluate`` adapts
      them; predict with ``meta_model.apply(state.meta_params, params, model_state, ...)``.
      May be None for a custom learner.
    """

    init: Callable[[PRNGKey, MetaBatch], MetaState]
    meta_step: Callable[[MetaState, MetaBatch, PRNGKey], tuple[MetaState, Metrics]]
    evaluate: Callable[..., Metrics]
    meta_model: MetaModel | None = None
    adapt: Callable[..., tuple[Params, State]] | None = None


def prefix(metrics: Metrics, name: str) -> Metrics:
    """``{"loss": x}`` -> ``{"name/loss": x}``."""
    return {f"{name}/{key}": value for key, value in metrics.items()}


def task_keys(rng: PRNGKey, num_tasks: int) -> Array:
    """One key per task, ``fold_in(rng, i)``: independent of how tasks are split over devices."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_tasks))


def apply_outer_update(
    optimizer: optax.GradientTransformation, state: MetaState, meta_grads: Params
) -> MetaState:
    """Takes one outer-optimizer step on the meta-parameters and increments the step."""
    updates, opt_state = optimizer.update(meta_grads, state.opt_state, state.meta_params)
    return MetaState(
        step=state.step + 1,
        meta_params=optax.apply_updates(state.meta_params, updates),
        model_state=state.model_state,
        opt_state=opt_state,
    )


def init_meta_state(
    meta_model_init: Callable,
    optimizer: optax.GradientTransformation,
    rng: PRNGKey,
    meta_batch: MetaBatch,
) -> MetaState:
    """Initializes meta-parameters from one task's support inputs and the optimizer state."""
    meta_params, model_state = meta_model_init(rng, meta_batch.train.x[0])
    return MetaState(
        step=jnp.zeros((), jnp.int32),
        meta_params=meta_params,
        model_state=model_state,
        opt_state=optimizer.init(meta_params),
    )


def check_meta_params_enter(meta_model, where: str, learner_name: str, explanation: str) -> None:
    """Raises a ValueError unless every meta-parameter enters ``where`` ("energy": the inner
    energy, "reset": the task's initial parameters), per the meta-model's static facts."""
    reset_keys, energy_keys = meta_model.reset_keys, meta_model.energy_keys
    if reset_keys is None or energy_keys is None:
        return  # A user-defined meta-model without the facts: nothing to check.
    entering = energy_keys if where == "energy" else reset_keys
    missing = sorted((reset_keys | energy_keys) - entering)
    target = "inner energy" if where == "energy" else "task initialization"
    if missing:
        raise ValueError(
            f"{learner_name} cannot meta-learn the meta-parameters {missing} of this meta-model: "
            f"{explanation} Use maml (or evolution) for this meta-model, or a meta-model whose "
            f"meta-parameters all enter the {target}."
        )


def averaged_meta_step(
    task_meta_grad: Callable,
    outer_optimizer: optax.GradientTransformation,
    task_chunk: TaskChunk = "auto",
) -> Callable[[MetaState, MetaBatch, PRNGKey], tuple[MetaState, Metrics]]:
    """A meta-step from a per-task meta-gradient estimator.

    ``task_meta_grad(meta_params, model_state, task, rng) -> (meta_grads, metrics)`` is
    mapped over the task axis (`metax.learner.inner.map_tasks` with ``task_chunk``);
    gradients and metrics are averaged over tasks (under sharding the mean is an all-reduce),
    and ``outer_optimizer`` applies the mean gradient.
    """

    def meta_step(state: MetaState, meta_batch: MetaBatch, rng: PRNGKey):
        n = meta_batch.train.x.shape[0]
        meta_grads, metrics = mean_over_tasks(
            lambda task, key: task_meta_grad(state.meta_params, state.model_state, task, key),
            meta_batch,
            task_keys(rng, n),
            task_chunk=resolve_task_chunk(task_chunk, n, state.meta_params),
        )
        metrics = {key: jnp.mean(value) for key, value in metrics.items()}
        metrics["meta_grad_norm"] = optax.tree.norm(meta_grads)
        return apply_outer_update(outer_optimizer, state, meta_grads), metrics

    return meta_step


def gradient_learner(
    meta_model,
    task_meta_grad: Callable,
    inner_optimizer: optax.GradientTransformation,
    outer_optimizer: optax.GradientTransformation,
    inner_batch_size: int | None = None,
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """A `Learner` from a per-task meta-gradient estimator (see `averaged_meta_step`), with the
    usual initialization and the shared ``evaluate`` (adapt on support, score the query set)."""

    def init(rng: PRNGKey, meta_batch: MetaBatch) -> MetaState:
        return init_meta_state(meta_model.init, outer_optimizer, rng, meta_batch)

    return Learner(
        init,
        averaged_meta_step(task_meta_grad, outer_optimizer, task_chunk),
        make_evaluate(meta_model, inner_optimizer, inner_batch_size, task_chunk),
        meta_model,
        make_adapt(meta_model, inner_optimizer, inner_batch_size),
    )
