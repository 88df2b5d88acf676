"""Reptile and buffered Reptile: first-order learners that need no backward pass through the
inner loop."""

import jax
import optax

from metax.data.base import Dataset, MetaBatch
from metax.learner.base import (
    Learner,
    check_meta_params_enter,
    gradient_learner,
    prefix,
)
from metax.learner.inner import InnerLoop, TaskChunk, adapt_task
from metax.learner.registry import register_learner
from metax.meta_models.base import MetaModel


def support_and_query(task: MetaBatch) -> Dataset:
    """One task's support and query sets as one Dataset (Reptile adapts on both)."""
    return Dataset(
        x=jax.numpy.concatenate([task.support.x, task.query.x]),
        y=jax.numpy.concatenate([task.support.y, task.query.y]),
        info=task.support.info,
    )


def _reptile_learner(meta_model, inner, outer_optimizer, task_meta_grad, task_chunk, name):
    def task_step(meta_params, model_state, task, rng):
        k_adapt, k_outer = jax.random.split(rng)
        meta_grads, adapted = task_meta_grad(
            meta_params, model_state, k_adapt, support_and_query(task)
        )
        _, (_, outer_metrics) = meta_model.outer_energy(
            meta_params, adapted.params, adapted.state, k_outer, task.query
        )
        metrics = {**prefix(adapted.metrics, "inner"), **prefix(outer_metrics, "outer")}
        return meta_grads, metrics

    return gradient_learner(
        meta_model,
        inner,
        outer_optimizer,
        task_meta_grad=task_step,
        task_chunk=task_chunk,
        learner_name=name,
    )


@register_learner(
    example=lambda meta_model, **kw: reptile(
        meta_model,
        **{
            "inner_optimizer": optax.sgd(0.05),
            "outer_optimizer": optax.sgd(0.1),
            "num_inner_steps": 2,
            **kw,
        },
    ),
)
def reptile(
    meta_model: MetaModel,
    inner_optimizer: optax.GradientTransformation = optax.sgd(0.01),
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    num_inner_steps: int = 5,
    inner_batch_size: int | None = None,
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """Reptile (Nichol et al., 2018): adapt on support + query, move the meta-parameters
    towards the adapted parameters.

    The meta-gradient ``J^T (params_0 - params_K)`` (``J = d params_0 / d meta_params``, the
    reset's Jacobian) is ``theta - phi_K`` for a learned initialization; it is averaged over
    tasks and fed to ``outer_optimizer`` (``optax.sgd(eps)`` is the paper's
    ``theta += eps (phi - theta)``). Every meta-parameter must be a task initialization (the
    meta-model's ``reset_keys``): Reptile's update carries no information about others.
    ``task_chunk``: how tasks are mapped, as for every learner (`metax.learner.inner.TaskChunk`).
    """
    check_meta_params_enter(
        meta_model,
        "reset",
        "reptile",
        "Reptile's meta-gradient theta - phi_K only exists for meta-parameters that mirror task "
        "parameters (a learned initialization); the others would get no update at all.",
    )

    inner = InnerLoop(
        optimizer=inner_optimizer,
        num_steps=num_inner_steps,
        batch_size=inner_batch_size,
        owner="reptile",
    )

    def task_meta_grad(meta_params, model_state, rng, data):
        adapted = adapt_task(
            meta_model,
            inner,
            jax.lax.stop_gradient(meta_params),
            model_state,
            rng,
            data,
            reset_vjp=True,
        )
        difference = jax.tree.map(jax.numpy.subtract, adapted.initial, adapted.params)
        reset_vjp = adapted.reset_vjp
        assert reset_vjp is not None  # Asked for above.
        (meta_grads,) = reset_vjp(difference)
        return meta_grads, adapted

    return _reptile_learner(
        meta_model, inner, outer_optimizer, task_meta_grad, task_chunk, "reptile"
    )


@register_learner(
    example=lambda meta_model, **kw: buffered_reptile(
        meta_model,
        **{
            "inner_optimizer": optax.sgd(0.05),
            "outer_optimizer": optax.sgd(0.1),
            "num_inner_steps": 2,
            **kw,
        },
    ),
)
def buffered_reptile(
    meta_model: MetaModel,
    inner_optimizer: optax.GradientTransformation = optax.sgd(0.01),
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    num_inner_steps: int = 5,
    inner_batch_size: int | None = None,
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """Buffered Reptile (original metax): adapt on support + query and accumulate the partial
    gradient of the inner energy w.r.t. the meta-parameters at every inner step.

    The meta-gradient ``sum_k d/d theta E_in(theta, phi_k)`` (partial derivative, ``phi_k``
    held fixed) is averaged over tasks and fed to ``outer_optimizer``: meta-parameters and task
    parameters descend the same energy along the trajectory, with no backward pass through
    it. Every meta-parameter must enter the inner energy (the meta-model's ``energy_keys``).
    ``task_chunk``: how tasks are mapped, as for every learner (`metax.learner.inner.TaskChunk`).
    """
    check_meta_params_enter(
        meta_model,
        "energy",
        "buffered_reptile",
        "buffered Reptile accumulates the partial derivatives of the inner energy w.r.t. the "
        "meta-parameters; those that only set the starting point (without a regularizer "
        "pulling towards them) have a zero partial derivative.",
    )

    inner = InnerLoop(
        optimizer=inner_optimizer,
        num_steps=num_inner_steps,
        batch_size=inner_batch_size,
        owner="buffered_reptile",
    )

    def task_meta_grad(meta_params, model_state, rng, data):
        adapted = adapt_task(
            meta_model, inner, meta_params, model_state, rng, data, accumulate_meta_grads=True
        )
        return adapted.meta_grads, adapted

    return _reptile_learner(
        meta_model, inner, outer_optimizer, task_meta_grad, task_chunk, "buffered_reptile"
    )
