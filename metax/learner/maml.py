"""MAML: backpropagation through the unrolled inner loop, second order or first order, with
MAML++'s multi-step loss."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from metax.learner.base import Learner, gradient_learner, prefix
from metax.learner.inner import (
    InnerLoop,
    TaskChunk,
    adapt_task,
    stop_gradient_through_adaptation,
)
from metax.learner.registry import register_learner
from metax.meta_models.base import MetaModel


@register_learner(
    example=lambda meta_model, **kw: maml(
        meta_model,
        **{
            "inner_optimizer": optax.sgd(0.05),
            "outer_optimizer": optax.sgd(0.1),
            "num_inner_steps": 2,
            **kw,
        },
    ),
    label="`maml` (second order, first order, truncated, multi-step loss)",
)
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
    multi_step_weights: Sequence[float] | None = None,
) -> Learner:
    """Model-agnostic meta-learning (Finn et al., 2017); works with every meta-model.

    Per task: ``params_0, state = meta_model.reset(meta_params)``, then ``num_inner_steps`` steps
    of ``inner_optimizer`` on the inner energy of the support set (full batch, or minibatches of
    ``inner_batch_size``), then the outer energy on the query set. The meta-gradient is the
    gradient of the outer energy, averaged over the task axis, through the whole inner loop
    (``first_order=False``), or with the adaptation's Jacobian replaced by the identity
    (``first_order=True``: d params_K / d params_0 = I, FOMAML). It is applied with
    ``outer_optimizer``. The inner optimizer may read meta-learned learning rates
    (`metax.learner.learned_sgd` with `metax.meta_models.learned_rates`: Meta-SGD, MAML++'s LSLR).

    ``multi_step_weights=(w_1, ..., w_K)`` (one per inner step): MAML++'s multi-step loss, the
    outer objective ``sum_k w_k E_out(params_k)`` over the parameters after every inner step
    (all weight on the last step is plain MAML).

    Cost controls (same meta-gradient, up to float rounding): ``remat=True`` recomputes each
    inner step's activations in the backward pass instead of storing them; ``task_chunk`` is
    how tasks are mapped, as for every learner (`metax.learner.inner.TaskChunk`). Another
    gradient: ``backprop_steps=T``
    differentiates through the last T inner steps only (truncated backpropagation; T =
    num_inner_steps is exact, T = 0 is first order). See `metax.learner.InnerLoop`.

    Metrics of ``meta_step`` (averages over tasks): ``outer/<metric>`` of the outer energy
    after the last inner step (``loss``, ``accuracy`` for classification),
    ``inner/loss_before`` and ``inner/loss_after`` (inner energy on the support set before and
    after adaptation), ``inner/grad_norm`` (first inner step), ``meta_grad_norm``; with
    ``multi_step_weights``, ``outer/multi_step_loss`` (the objective).
    """
    inner = InnerLoop(
        optimizer=inner_optimizer,
        num_steps=num_inner_steps,
        batch_size=inner_batch_size,
        first_order=first_order,
        remat=remat,
        backprop_steps=backprop_steps,
        owner="maml",
    )
    weights = None
    if multi_step_weights is not None:
        weights = tuple(float(w) for w in multi_step_weights)
        if len(weights) != num_inner_steps or num_inner_steps == 0:
            raise ValueError(
                f"maml multi_step_weights needs one weight per inner step "
                f"(num_inner_steps = {num_inner_steps}), got {len(weights)}: {weights}."
            )

    def task_loss(meta_params, model_state, task, rng):
        k_adapt, k_outer = jax.random.split(rng)

        def query_loss(params, state):
            return meta_model.outer_energy(meta_params, params, state, k_outer, task.query)

        adapted = adapt_task(
            meta_model,
            inner,
            meta_params,
            model_state,
            k_adapt,
            task.support,
            per_step_fn=None if weights is None else (lambda params, state: (params, state)),
        )
        loss, (_, outer_metrics) = query_loss(adapted.params, adapted.state)
        if weights is not None:
            trajectory, states = adapted.per_step
            if first_order:  # Each step's parameters carry the derivative of the reset.
                trajectory = jax.vmap(
                    lambda params: stop_gradient_through_adaptation(adapted.initial, params)
                )(trajectory)
            losses = jax.vmap(lambda p, s: query_loss(p, s)[0])(trajectory, states)
            loss = jnp.dot(jnp.asarray(weights, losses.dtype), losses)
            outer_metrics = {**outer_metrics, "multi_step_loss": loss}
        return loss, {**prefix(adapted.metrics, "inner"), **prefix(outer_metrics, "outer")}

    return gradient_learner(
        meta_model,
        inner,
        outer_optimizer,
        task_loss=task_loss,
        task_chunk=task_chunk,
        learner_name="maml",
    )
