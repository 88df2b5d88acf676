"""Implicit differentiation at the adapted parameters (implicit function theorem).

At an inner optimum ``phi*(theta)`` of ``E_in(theta, phi)`` the meta-gradient of
``L(theta) = E_out(theta, phi*(theta))`` is

    dL/dtheta = d_theta E_out - (d^2 E_in / d theta d phi) H^-1 d_phi E_out,

``H = d^2 E_in / d phi^2``. ``H^-1 v`` is approximated by an inverse-HVP method: conjugate
gradient (iMAML), recurrent backpropagation (a truncated Neumann series), or T1T2 (H^-1 = I).
Hessian-vector products are jvp-of-grad; no Hessian is ever materialized.
"""

from collections.abc import Callable
from typing import NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax
from jax.scipy.sparse import linalg

from metax.learner.base import (
    Learner,
    check_meta_params_enter,
    gradient_learner,
    prefix,
)
from metax.learner.inner import InnerLoop, TaskChunk, adapt_task
from metax.learner.registry import register_learner
from metax.meta_models.base import MetaModel
from metax.types import Params
from metax.validate import check_int, check_number

Hvp = Callable[[Params], Params]


class InverseHvp(NamedTuple):
    """``solve(hvp, v) -> approximately H^-1 v``, with ``hvp(u) = H u`` (pytrees like ``v``)."""

    solve: Callable[[Hvp, Params], Params]


def _tree_axpy(a, x, y):
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


@gin.register(module="metax.learner")
def conjugate_gradient(
    num_steps: int = 10, damping: float = 0.0, solver: str = "cg", restart: int = 10
) -> InverseHvp:
    """Solves ``(H + damping I) u = v`` with ``num_steps`` iterations of ``jax.scipy``'s
    ``cg`` (H must be positive definite, iMAML), ``gmres`` or ``bicgstab`` (any invertible H),
    starting from ``u = 0`` with tolerance 0 (a fixed number of iterations)."""
    solvers = {"cg": linalg.cg, "gmres": linalg.gmres, "bicgstab": linalg.bicgstab}
    if solver not in solvers:
        raise ValueError(
            f"conjugate_gradient solver must be one of {sorted(solvers)}, got {solver!r}."
        )
    check_int("conjugate_gradient num_steps", num_steps, 1)
    check_number("conjugate_gradient damping", damping, 0)
    check_int("conjugate_gradient restart", restart, 1)

    def solve(hvp, v):
        def damped(u):
            return _tree_axpy(damping, u, hvp(u)) if damping else hvp(u)

        kwargs = {"tol": 0.0, "atol": 0.0, "maxiter": num_steps}
        if solver == "gmres":
            kwargs.update(restart=restart, maxiter=max(1, num_steps // restart))
        return solvers[solver](damped, v, **kwargs)[0]

    return InverseHvp(solve)


@gin.register(module="metax.learner")
def recurrent_backprop(num_steps: int = 10, alpha: float = 0.01) -> InverseHvp:
    """Neumann series ``H^-1 v ~ alpha sum_{k=0}^{K} (I - alpha H)^k v`` (Almeida-Pineda
    recurrent backpropagation, Liao et al. 2018). Converges iff ``0 < alpha < 2 / lambda_max(H)``
    with H positive definite; the error then shrinks like ``max_i |1 - alpha lambda_i|^(K+1)``."""
    check_int("recurrent_backprop num_steps", num_steps, 0)
    check_number("recurrent_backprop alpha", alpha, 0, above=True)

    def solve(hvp, v):
        def body(_, carry):
            term, total = carry
            term = _tree_axpy(-alpha, hvp(term), term)
            return term, jax.tree.map(jnp.add, total, term)

        _, total = jax.lax.fori_loop(0, num_steps, body, (v, v))
        return jax.tree.map(lambda t: alpha * t, total)

    return InverseHvp(solve)


@gin.register(module="metax.learner")
def t1t2() -> InverseHvp:
    """T1-T2 (Luketina et al., 2016): ``H^-1 = I``."""
    return InverseHvp(lambda hvp, v: v)


@register_learner(
    example=lambda meta_model, **kw: implicit(
        meta_model,
        **{
            "inverse_hvp": conjugate_gradient(2),
            "inner_optimizer": optax.sgd(0.05),
            "outer_optimizer": optax.sgd(0.1),
            "num_inner_steps": 2,
            **kw,
        },
    ),
    label="`implicit` (CG, GMRES, BiCGSTAB, recurrent backprop, T1T2)",
)
def implicit(
    meta_model: MetaModel,
    inverse_hvp: InverseHvp | None = None,
    inner_optimizer: optax.GradientTransformation = optax.sgd(0.01),
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    num_inner_steps: int = 100,
    inner_batch_size: int | None = None,
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """Implicit differentiation (iMAML, Rajeswaran et al., 2019, and the module docstring).

    Per task: adapt ``num_inner_steps`` steps from the reset (not differentiated), then apply
    the implicit-function-theorem formula at the adapted parameters with ``inverse_hvp``
    (default: 10 steps of conjugate gradient). The
    formula is exact only at an inner optimum: run enough inner steps. Every meta-parameter
    must enter the inner energy: the inner optimum does not depend on the starting point, so
    a learned initialization without a regularizer gets a zero meta-gradient (an error here).
    ``task_chunk``: how tasks are mapped, as for every learner (`metax.learner.inner.TaskChunk`).
    """
    if inverse_hvp is None:
        inverse_hvp = conjugate_gradient()
    check_meta_params_enter(
        meta_model,
        "energy",
        "implicit",
        "the implicit gradient differentiates the inner optimum, which does not depend on where "
        "the inner optimization started, so meta-parameters that only set the starting point "
        "get zero (e.g. learned_init needs reg_strength to be trained implicitly).",
    )

    inner = InnerLoop(
        optimizer=inner_optimizer,
        num_steps=num_inner_steps,
        batch_size=inner_batch_size,
        owner="implicit",
    )

    def task_meta_grad(meta_params, model_state, task, rng):
        k_adapt, k_outer, k_inner = jax.random.split(rng, 3)
        adapted = adapt_task(meta_model, inner, meta_params, model_state, k_adapt, task.support)
        params, state = jax.lax.stop_gradient(adapted.params), adapted.state

        def outer(mp, p):
            return meta_model.outer_energy(mp, p, state, k_outer, task.query)

        def inner_grad(mp, p):  # d_phi E_in(theta, phi)
            return jax.grad(
                lambda q: meta_model.inner_energy(mp, q, state, k_inner, task.support)[0]
            )(p)

        (_, (_, outer_metrics)), (direct, v) = jax.value_and_grad(
            outer, argnums=(0, 1), has_aux=True
        )(meta_params, params)
        u = inverse_hvp.solve(
            lambda w: jax.jvp(lambda p: inner_grad(meta_params, p), (params,), (w,))[1], v
        )
        _, mixed_vjp = jax.vjp(lambda mp: inner_grad(mp, params), meta_params)
        (mixed,) = mixed_vjp(u)
        meta_grads = jax.tree.map(jnp.subtract, direct, mixed)
        return meta_grads, {**prefix(adapted.metrics, "inner"), **prefix(outer_metrics, "outer")}

    return gradient_learner(
        meta_model,
        inner,
        outer_optimizer,
        task_meta_grad=task_meta_grad,
        task_chunk=task_chunk,
        learner_name="implicit",
    )
