"""MAML: backpropagation through the unrolled inner loop, second order or first order."""

import gin
import jax
import jax.numpy as jnp
import optax

from metax.data.base import MetaBatch, num_tasks
from metax.learner.base import (
    Learner,
    MetaState,
    apply_outer_update,
    init_meta_state,
    prefix,
    task_keys,
)
from metax.learner.inner import (
    TaskChunk,
    adapt_and_score,
    check_task_chunk,
    make_adapt,
    make_evaluate,
    mean_over_tasks,
    resolve_task_chunk,
    scalar_mean,
)
from metax.module.base import MetaModel


@gin.register(module="metax.learner")
def maml(
    meta_model: MetaModel,
    inner_optimizer: optax.GradientTransformation = optax.sgd(0.01),
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    num_inner_steps: int = 1,
    first_order: bool = False,
    inner_batch_size: int | None = None,
    remat: bool = False,
    backprop_steps: int | None = None,
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """Model-agnostic meta-learning (Finn et al., 2017); works with every meta-model.

    Per task: ``params_0, state = meta_model.reset(meta_params)``, then ``num_inner_steps`` steps
    of ``inner_optimizer`` on the inner energy of the support set (full batch, or minibatches of
    ``inner_batch_size``), then the outer energy on the query set. The meta-gradient is the
    gradient of the outer energy, averaged over the task axis, through the whole inner loop
    (``first_order=False``), or with the adaptation's Jacobian replaced by the identity
    (``first_order=True``: d params_K / d params_0 = I, FOMAML). It is applied with
    ``outer_optimizer``.

    Cost controls (same meta-gradient, up to float rounding): ``remat=True`` recomputes each
    inner step's activations in the backward pass instead of storing them (memory of K inner
    steps no longer grows with the activations of every step); ``task_chunk`` is how the
    meta-batch's tasks are mapped: ``None`` vmaps all, ``k`` processes k at a time
    (`metax.learner.inner.map_tasks`), ``"auto"`` picks per backend and model
    (`metax.learner.inner.resolve_task_chunk`). Another gradient:
    ``backprop_steps=T`` differentiates through the last T inner steps only (truncated
    backpropagation; T = num_inner_steps is exact, T = 0 is first order).

    Metrics of ``meta_step`` (averages over tasks): ``outer/<metric>`` of the outer energy
    (``loss``, ``accuracy`` for classification), ``inner/loss_before`` and ``inner/loss_after``
    (inner energy on the support set before and after adaptation), ``inner/grad_norm`` (first
    inner step), ``meta_grad_norm``.
    """
    if num_inner_steps < 0:
        raise ValueError(f"maml num_inner_steps must be >= 0, got {num_inner_steps}.")
    if backprop_steps is not None and not 0 <= backprop_steps <= num_inner_steps:
        raise ValueError(
            f"maml backprop_steps must be in [0, num_inner_steps={num_inner_steps}], "
            f"got {backprop_steps}."
        )
    check_task_chunk(task_chunk, "maml")

    def task_loss(meta_params, model_state, task, rng):
        loss, inner_metrics, outer_metrics = adapt_and_score(
            meta_model,
            inner_optimizer,
            meta_params,
            model_state,
            task,
            rng,
            num_inner_steps,
            inner_batch_size,
            first_order,
            remat,
            backprop_steps,
        )
        return loss, {**prefix(inner_metrics, "inner"), **prefix(outer_metrics, "outer")}

    def batch_loss(meta_params, model_state, meta_batch, rng):
        losses, metrics = jax.vmap(
            lambda task, key: task_loss(meta_params, model_state, task, key)
        )(meta_batch, task_keys(rng, num_tasks(meta_batch)))
        return jnp.mean(losses), metrics

    def mean_meta_grad(meta_params, model_state, meta_batch, rng):
        n = num_tasks(meta_batch)
        chunk = resolve_task_chunk(task_chunk, n, meta_params)
        if chunk is None:
            # Differentiating the vmapped mean sums task gradients in the backward pass: no
            # per-task copies of the gradient (what large models on accelerators need).
            (_, metrics), grads = jax.value_and_grad(batch_loss, has_aux=True)(
                meta_params, model_state, meta_batch, rng
            )
            return grads, metrics
        return mean_over_tasks(
            lambda task, key: jax.grad(task_loss, has_aux=True)(
                meta_params, model_state, task, key
            ),
            meta_batch,
            task_keys(rng, n),
            task_chunk=chunk,
        )

    def init(rng, meta_batch: MetaBatch) -> MetaState:
        return init_meta_state(meta_model.init, outer_optimizer, rng, meta_batch)

    def meta_step(state: MetaState, meta_batch: MetaBatch, rng):
        meta_grads, metrics = mean_meta_grad(state.meta_params, state.model_state, meta_batch, rng)
        metrics = scalar_mean(metrics)
        metrics["meta_grad_norm"] = optax.tree.norm(meta_grads)
        return apply_outer_update(outer_optimizer, state, meta_grads), metrics

    return Learner(
        init,
        meta_step,
        make_evaluate(meta_model, inner_optimizer, inner_batch_size, task_chunk),
        meta_model,
        make_adapt(meta_model, inner_optimizer, inner_batch_size),
    )
