"""Equilibrium propagation as in the contrastive meta-learning rule (CML, Zucchet et al. 2022)."""

import jax
import optax

from metax.data.base import MetaBatch
from metax.learner.base import (
    Learner,
    check_meta_params_enter,
    gradient_learner,
    prefix,
)
from metax.learner.inner import InnerLoop, TaskChunk, adapt_task, run_inner_loop
from metax.learner.registry import register_learner
from metax.meta_models.base import MetaModel
from metax.validate import check_number


@register_learner(
    example=lambda meta_model, **kw: eqprop(
        meta_model,
        **{
            "inner_optimizer": optax.sgd(0.05),
            "outer_optimizer": optax.sgd(0.1),
            "num_inner_steps": 2,
            "num_nudged_steps": 1,
            **kw,
        },
    ),
    label="`eqprop` (and symmetric)",
)
def eqprop(
    meta_model: MetaModel,
    inner_optimizer: optax.GradientTransformation = optax.sgd(0.01),
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    num_inner_steps: int = 100,
    num_nudged_steps: int = 100,
    beta: float = 0.1,
    symmetric: bool = False,
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """The contrastive meta-learning rule: two (or three) phases of inner optimization.

    With the total energy ``F(theta, phi, b) = E_in(theta, phi; support) + b E_out(theta, phi;
    query)``: the free phase minimizes ``F(., ., 0)`` from the reset (``num_inner_steps``),
    the nudged phase minimizes ``F(., ., beta)`` from the free solution (``num_nudged_steps``),
    and the meta-gradient is

        (d_theta F(theta, phi_beta, beta) - d_theta F(theta, phi_0, 0)) / beta

    (partial derivatives in theta), which tends to the implicit gradient as ``beta -> 0`` with
    an O(beta) error; ``symmetric=True`` uses phases at ``+beta`` and ``-beta`` and divides by
    ``2 beta``, an O(beta^2) error. When the outer energy does not depend on theta directly this
    is CML's ``(d_theta E_in(phi_beta) - d_theta E_in(phi_0)) / beta``. Both phases use
    ``inner_optimizer``; they are not differentiated. As for implicit differentiation, every
    meta-parameter must enter the inner energy.
    ``task_chunk``: how tasks are mapped, as for every learner (`metax.learner.inner.TaskChunk`).
    """
    check_number("eqprop beta", beta, 0, above=True)
    check_meta_params_enter(
        meta_model,
        "energy",
        "eqprop",
        "equilibrium propagation contrasts the inner energy's partial derivatives at two "
        "equilibria, which do not depend on where the inner optimization started, so "
        "meta-parameters that only set the starting point get zero (e.g. learned_init needs "
        "reg_strength).",
    )

    free_phase = InnerLoop(optimizer=inner_optimizer, num_steps=num_inner_steps, owner="eqprop")
    nudged_phase = InnerLoop(
        optimizer=inner_optimizer, num_steps=num_nudged_steps, owner="eqprop nudged phase:"
    )

    def total_energy(b):
        def energy(meta_params, params, state, rng, task: MetaBatch):
            k_in, k_out = jax.random.split(rng)
            inner, (state, metrics) = meta_model.inner_energy(
                meta_params, params, state, k_in, task.support
            )
            outer, _ = meta_model.outer_energy(meta_params, params, state, k_out, task.query)
            return inner + b * outer, (state, metrics)

        return energy

    def task_meta_grad(meta_params, model_state, task, rng):
        k_free, k_nudged, k_grad, k_outer = jax.random.split(rng, 4)
        adapted = adapt_task(meta_model, free_phase, meta_params, model_state, k_free, task.support)
        free, state = adapted.params, adapted.state

        def nudged_grad(b):
            energy = total_energy(b)
            nudged = run_inner_loop(energy, nudged_phase, meta_params, free, state, k_nudged, task)
            return jax.grad(lambda mp: energy(mp, nudged.params, nudged.state, k_grad, task)[0])(
                meta_params
            )

        if symmetric:
            plus, minus = nudged_grad(beta), nudged_grad(-beta)
            meta_grads = jax.tree.map(lambda p, m: (p - m) / (2 * beta), plus, minus)
        else:
            free_grad = jax.grad(lambda mp: total_energy(0.0)(mp, free, state, k_grad, task)[0])(
                meta_params
            )
            meta_grads = jax.tree.map(lambda p, f: (p - f) / beta, nudged_grad(beta), free_grad)
        _, (_, outer_metrics) = meta_model.outer_energy(
            meta_params, free, state, k_outer, task.query
        )
        return meta_grads, {**prefix(adapted.metrics, "inner"), **prefix(outer_metrics, "outer")}

    return gradient_learner(
        meta_model,
        free_phase,
        outer_optimizer,
        task_meta_grad=task_meta_grad,
        task_chunk=task_chunk,
        learner_name="eqprop",
    )
