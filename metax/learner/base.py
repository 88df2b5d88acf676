"""The learner interface (outer loop), its state (also the checkpoint), and the shared outer
step every gradient-based learner is built from."""

from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metax.checks import check_meta_batch, check_model_fits_data
from metax.data.base import MetaBatch, num_tasks, task_keys
from metax.learner.inner import (
    InnerLoop,
    TaskChunk,
    check_task_chunk,
    make_adapt,
    make_evaluate,
    mean_over_tasks,
    resolve_task_chunk,
)
from metax.learner.protocols import AdaptFn, EvaluateFn, InitFn, MetaStepFn
from metax.meta_models.base import MetaModel
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
    * ``evaluate(state, meta_batch, rng, setting) -> metrics``: per-task metrics of the query
      sets, each of shape ``(tasks,)``, after adapting each task as the static ``setting``
      says: for learners with an inner loop, the number of inner steps.
    * ``meta_model``: the `MetaModel` it meta-learns (lets the training loop check, before
      compiling, that the model fits the tasks' data); None for learners without one.
    * ``adapt(state, support, rng, num_inner_steps) -> (params, model_state)``: one task's
      adapted parameters from its support `Dataset` (no task axis), as ``evaluate`` adapts
      them; predict with ``meta_model.apply(state.meta_params, params, model_state, ...)``.
      None for learners without an inner loop.
    * ``eval_settings(inner_steps) -> {name: setting}``: the evaluations to run when a user
      asks for ``inner_steps`` (e.g. ``train.eval_inner_steps``); metrics are reported as
      ``eval/<name>/<metric>``. None: ``{"steps_k": k for k in inner_steps}``.
    """

    init: InitFn
    meta_step: MetaStepFn
    evaluate: EvaluateFn
    meta_model: MetaModel | None = None
    adapt: AdaptFn | None = None
    eval_settings: Callable[[Sequence[int]], dict[str, Hashable]] | None = None


def evaluation_settings(learner: Learner, inner_steps: Sequence[int]) -> dict[str, Hashable]:
    """What ``learner.evaluate`` runs with when ``inner_steps`` are asked for (see `Learner`)."""
    if learner.eval_settings is None:
        return {f"steps_{k}": k for k in inner_steps}
    return dict(learner.eval_settings(tuple(inner_steps)))


def prefix(metrics: Metrics, name: str) -> Metrics:
    """``{"loss": x}`` -> ``{"name/loss": x}``."""
    return {f"{name}/{key}": value for key, value in metrics.items()}


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
    meta_model: MetaModel,
    optimizer_init: Callable[[Params], Any],
    rng: PRNGKey,
    meta_batch: MetaBatch,
) -> MetaState:
    """Checks the meta-batch (task axis, and that the meta-model fits its data: see
    `metax.checks`), then initializes the meta-parameters from one task's support inputs and
    the outer optimizer's state with ``optimizer_init(meta_params)``."""
    check_meta_batch(meta_batch)
    episode = jax.tree.map(lambda x: x[0], meta_batch)
    check_model_fits_data(meta_model, episode)
    meta_params, model_state = meta_model.init(rng, episode.support.x)
    return MetaState(
        step=jnp.zeros((), jnp.int32),
        meta_params=meta_params,
        model_state=model_state,
        opt_state=optimizer_init(meta_params),
    )


def check_meta_params_enter(meta_model, where: str, learner_name: str, explanation: str) -> None:
    """Raises a ValueError unless every meta-parameter enters ``where`` ("energy": the inner
    energy, "reset": the task's initial parameters), per the meta-model's static facts."""
    check_learner_inputs(meta_model, None, learner_name)
    reset_keys, energy_keys = meta_model.reset_keys, meta_model.energy_keys
    if reset_keys is None or energy_keys is None:
        return  # A user-defined meta-model without the facts: nothing to check.
    entering = energy_keys if where == "energy" else reset_keys
    missing = sorted((reset_keys | energy_keys | meta_model.optimizer_keys) - entering)
    target = "inner energy" if where == "energy" else "task initialization"
    if missing:
        raise ValueError(
            f"{learner_name} cannot meta-learn the meta-parameters {missing} of this meta-model: "
            f"{explanation} Use maml (or evolution) for this meta-model, or a meta-model whose "
            f"meta-parameters all enter the {target}."
        )


def check_learner_inputs(meta_model, optimizer, learner_name: str) -> None:
    """Raises a TypeError naming the fix unless ``meta_model`` is a `MetaModel` and
    ``optimizer`` (the outer one; None for learners without) an optax transformation."""
    from metax.nn import Model

    if not isinstance(meta_model, MetaModel):
        hint = (
            " It is a metax.nn.Model: wrap it in a meta-model, e.g. "
            "metax.meta_models.learned_init(model) for MAML."
            if isinstance(meta_model, Model)
            else ""
        )
        raise TypeError(
            f"{learner_name} needs a MetaModel as meta_model, got {type(meta_model).__name__}."
            + hint
        )
    if optimizer is not None and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"{learner_name} outer_optimizer must be an optax GradientTransformation (e.g. "
            f"optax.adam(1e-3)), got {optimizer!r}."
        )


def check_inner_optimizer(meta_model: MetaModel, inner: InnerLoop, learner_name: str) -> None:
    """Raises a ValueError if the meta-model has meta-parameters that only the inner optimizer
    reads (learned inner learning rates) and ``inner.optimizer`` does not read them all."""
    needed = meta_model.optimizer_keys
    read: frozenset[str] = getattr(inner.optimizer.update, "meta_param_keys", frozenset())
    if needed - read:
        raise ValueError(
            f"This meta-model meta-learns inner learning rates {sorted(needed)}, but the "
            f"{learner_name} inner optimizer does not read them (they would never change). Set "
            f"{learner_name}.inner_optimizer = @metax.learner.learned_sgd() in gin, or "
            f"inner_optimizer=metax.learner.learned_sgd() in Python."
        )


def _mean_loss_over_tasks(task_loss: Callable) -> Callable:
    """``(meta_params, model_state, meta_batch, rng) -> (mean loss, per-task metrics)``, the
    tasks vmapped."""

    def batch_loss(meta_params, model_state, meta_batch, rng):
        losses, metrics = jax.vmap(
            lambda task, key: task_loss(meta_params, model_state, task, key)
        )(meta_batch, task_keys(rng, num_tasks(meta_batch)))
        return jnp.mean(losses), metrics

    return batch_loss


def averaged_meta_step(
    outer_optimizer: optax.GradientTransformation,
    *,
    task_loss: Callable | None = None,
    task_meta_grad: Callable | None = None,
    task_chunk: TaskChunk = "auto",
) -> MetaStepFn:
    """The meta-step of a learner from its per-task estimator, one of:

    * ``task_loss(meta_params, model_state, task, rng) -> (loss, metrics)``: differentiated
      (MAML and its variants, ProtoNets);
    * ``task_meta_grad(meta_params, model_state, task, rng) -> (meta_grads, metrics)``: a
      meta-gradient estimated otherwise (Reptile, implicit differentiation, EP).

    ``task`` is one task of the meta-batch (no task axis); ``metrics`` flat scalars. Tasks are
    mapped as ``task_chunk`` says (`metax.learner.inner.map_tasks`); gradients and metrics are
    averaged over tasks (under sharding the mean is an all-reduce), ``meta_grad_norm`` is
    added, and ``outer_optimizer`` applies the mean gradient.
    """
    if task_loss is not None and task_meta_grad is None:
        estimator = jax.grad(task_loss, has_aux=True)
        batch_loss = _mean_loss_over_tasks(task_loss)
    elif task_meta_grad is not None and task_loss is None:
        estimator, batch_loss = task_meta_grad, None
    else:
        raise TypeError("Pass exactly one of task_loss and task_meta_grad.")

    def mean_meta_grad(meta_params, model_state, meta_batch, rng):
        n = num_tasks(meta_batch)
        chunk = resolve_task_chunk(task_chunk, n, meta_params)
        if batch_loss is not None and chunk is None:
            # Differentiating the vmapped mean sums task gradients in the backward pass: no
            # per-task copies of the gradient (what large models on accelerators need).
            (_, metrics), grads = jax.value_and_grad(batch_loss, has_aux=True)(
                meta_params, model_state, meta_batch, rng
            )
            return grads, metrics
        return mean_over_tasks(
            lambda task, key: estimator(meta_params, model_state, task, key),
            meta_batch,
            task_keys(rng, n),
            task_chunk=chunk,
        )

    def meta_step(state: MetaState, meta_batch: MetaBatch, rng: PRNGKey):
        check_meta_batch(meta_batch)
        meta_grads, metrics = mean_meta_grad(state.meta_params, state.model_state, meta_batch, rng)
        metrics = {key: jnp.mean(value) for key, value in metrics.items()}
        metrics["meta_grad_norm"] = optax.tree.norm(meta_grads)
        return apply_outer_update(outer_optimizer, state, meta_grads), metrics

    return meta_step


def inner_loop_learner(
    meta_model: MetaModel,
    inner: InnerLoop,
    init: InitFn,
    meta_step: MetaStepFn,
    task_chunk: TaskChunk,
    learner_name: str,
) -> Learner:
    """A `Learner` with the shared ``evaluate`` and ``adapt`` of learners that adapt each task
    with ``inner`` (adapt on the support set, score the query set), after checking
    ``task_chunk`` and that ``inner``'s optimizer reads what the meta-model needs it to."""
    check_learner_inputs(meta_model, None, learner_name)
    check_task_chunk(task_chunk, learner_name)
    check_inner_optimizer(meta_model, inner, learner_name)
    return Learner(
        init,
        meta_step,
        make_evaluate(meta_model, inner, task_chunk),
        meta_model,
        make_adapt(meta_model, inner),
    )


def gradient_learner(
    meta_model: MetaModel,
    inner: InnerLoop,
    outer_optimizer: optax.GradientTransformation,
    *,
    task_loss: Callable | None = None,
    task_meta_grad: Callable | None = None,
    task_chunk: TaskChunk = "auto",
    learner_name: str = "learner",
) -> Learner:
    """A `Learner` from a per-task estimator (``task_loss`` or ``task_meta_grad``, see
    `averaged_meta_step`) applied by ``outer_optimizer``, with the usual initialization
    (`init_meta_state`) and the shared ``evaluate`` and ``adapt`` (`inner_loop_learner`).
    What every learner with an inner loop and a meta-gradient is built from."""

    check_learner_inputs(meta_model, outer_optimizer, learner_name)

    def init(rng: PRNGKey, meta_batch: MetaBatch) -> MetaState:
        return init_meta_state(meta_model, outer_optimizer.init, rng, meta_batch)

    meta_step = averaged_meta_step(
        outer_optimizer, task_loss=task_loss, task_meta_grad=task_meta_grad, task_chunk=task_chunk
    )
    return inner_loop_learner(meta_model, inner, init, meta_step, task_chunk, learner_name)
