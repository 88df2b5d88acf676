"""The inner loop shared by all learners: adapt task parameters with an optax optimizer."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metax.checks import check_input_rank, check_meta_batch
from metax.data.base import Dataset, MetaBatch, num_tasks, task_keys
from metax.learner.protocols import AdaptFn, EvaluateFn
from metax.meta_models.base import EnergyFn, MetaModel
from metax.types import Array, Metrics, Params, PRNGKey, State
from metax.validate import check_bool, check_int, check_optional_int

MAX_UNROLLED_STEPS = 16
TaskChunk = int | str | None
"""How a learner maps the tasks of a meta-batch (every learner's ``task_chunk``, checked by
`check_task_chunk` when the learner is built): ``None`` vmaps all tasks at once (best on
TPU/GPU); ``k`` (a divisor of the batch) runs k tasks at a time (`map_tasks`); ``"auto"`` (the
default) picks per backend and model (`resolve_task_chunk`). Same results up to float
summation order; only speed and memory differ."""


def minibatch(rng: PRNGKey, data: Dataset, batch_size: int) -> Dataset:
    """``batch_size`` samples of one task drawn without replacement; info is per task, kept."""
    idx = jax.random.permutation(rng, data.x.shape[0])[:batch_size]
    return Dataset(data.x[idx], data.y[idx], data.info)


@dataclasses.dataclass(frozen=True)
class InnerLoop:
    """How one task adapts: the inner optimizer and its settings, validated once when built.

    * ``optimizer``: an optax transformation; its ``update`` also receives
      ``meta_params=...`` (optax's extra arguments), so it may read meta-learned values such as
      the learning rates of `learned_sgd`. Plain optax transformations ignore it.
    * ``num_steps``: inner steps per task (>= 0).
    * ``batch_size``: support samples per step (a minibatch drawn without replacement), or
      None for the whole support set.
    * ``first_order``: the adaptation is not differentiated (d params_K / d params_0 = I).
    * ``remat``: recompute each step's activations in the backward pass instead of storing
      them (memory no longer grows with the steps' activations; about one extra forward).
    * ``backprop_steps``: differentiate exactly through the last T steps only (earlier steps
      have Jacobian I); None (or ``num_steps``) is exact, 0 is first order.

    Hashable, so it can be a static argument; `with_steps` gives the same loop with another
    number of steps (what evaluation uses).
    """

    optimizer: optax.GradientTransformationExtraArgs
    num_steps: int
    batch_size: int | None = None
    first_order: bool = False
    remat: bool = False
    backprop_steps: int | None = None
    owner: str = dataclasses.field(default="", compare=False, repr=False)  # Named in errors.

    def __post_init__(self):
        name = f"{self.owner} " if self.owner else ""
        if not hasattr(self.optimizer, "update") or not hasattr(self.optimizer, "init"):
            raise TypeError(
                f"The {name}inner optimizer must be an optax GradientTransformation (e.g. "
                f"optax.sgd(0.01)), got {self.optimizer!r}."
            )
        check_int(f"{name}num_inner_steps", self.num_steps, 0)
        check_optional_int(f"{name}inner_batch_size", self.batch_size, 1)
        check_bool(f"{name}first_order", self.first_order)
        check_bool(f"{name}remat", self.remat)
        check_optional_int(f"{name}backprop_steps", self.backprop_steps, 0)
        if self.backprop_steps is not None and not 0 <= self.backprop_steps <= self.num_steps:
            raise ValueError(
                f"{name}backprop_steps must be in [0, num_inner_steps={self.num_steps}], "
                f"got {self.backprop_steps}."
            )
        object.__setattr__(self, "optimizer", optax.with_extra_args_support(self.optimizer))

    def with_steps(self, num_steps: int) -> "InnerLoop":
        """The same optimizer and batch size for ``num_steps`` steps, with the settings that
        only change derivatives cleared (the same values): the loop ``evaluate`` and ``adapt``
        run."""
        return dataclasses.replace(
            self, num_steps=num_steps, first_order=False, remat=False, backprop_steps=None
        )


class Adaptation(NamedTuple):
    """What `run_inner_loop` and `adapt_task` return for one task.

    params, state: the adapted task parameters and model state. metrics: flat scalars,
    ``loss_before`` (inner energy at the start) and ``grad_norm`` (of the first step).
    meta_grads: with ``accumulate_meta_grads``, the partial gradients of the energy w.r.t.
    ``meta_params`` summed over the steps (buffered Reptile), else None. per_step: with
    ``per_step_fn``, its outputs after every step, stacked on a leading axis of size
    ``num_steps``, else None. initial: the task's reset parameters (from `adapt_task`; None
    from `run_inner_loop`). reset_vjp: with ``adapt_task(..., reset_vjp=True)``, the VJP of
    the reset at ``meta_params``: ``reset_vjp(cotangent of params) -> (meta-gradient,)``
    (Reptile's ``J^T (params_0 - params_K)``), else None. Not a JAX type: use it inside the
    task's function, do not return it.
    """

    params: Params
    state: State
    metrics: Metrics
    meta_grads: Params | None = None
    per_step: Any = None
    initial: Params | None = None
    reset_vjp: Callable[[Params], tuple[Params]] | None = None


def run_inner_loop(
    energy_fn: EnergyFn,
    inner: InnerLoop,
    meta_params: Params,
    params: Params,
    state: State,
    rng: PRNGKey,
    data: Dataset,
    *,
    accumulate_meta_grads: bool = False,
    per_step_fn: Callable[[Params, State], Any] | None = None,
) -> Adaptation:
    """Runs ``inner.num_steps`` steps of ``inner.optimizer`` minimizing ``energy_fn`` over
    ``params``.

    ``energy_fn(meta_params, params, state, rng, data) -> (loss, (state, metrics))`` is usually
    a meta-model's ``inner_energy`` and ``data`` one task's support set (no task axis); with
    ``inner.batch_size`` each step uses a minibatch of that size (``data`` must then be a
    Dataset). Differentiable in ``meta_params`` and ``params`` (second order), with
    ``inner.remat`` and ``inner.backprop_steps`` as `InnerLoop` says (``inner.first_order`` is
    `adapt_task`'s business). ``per_step_fn(params, state)`` is evaluated after every step
    (e.g. the query loss of MAML++'s multi-step loss). Returns an `Adaptation`.
    """
    num_steps, batch_size, backprop_steps = inner.num_steps, inner.batch_size, inner.backprop_steps
    if batch_size is not None and batch_size > data.x.shape[0]:
        raise ValueError(
            f"inner batch_size must be in [1, {data.x.shape[0]}] (the support set size), "
            f"got {batch_size}."
        )
    argnums = (1, 0) if accumulate_meta_grads else 1
    grad_fn = jax.value_and_grad(energy_fn, argnums=argnums, has_aux=True)

    def step(carry, inputs):
        key, exact = inputs
        params, state, opt_state, meta_grads = carry
        batch = data if batch_size is None else minibatch(key, data, batch_size)
        (loss, (state, _)), grads = grad_fn(meta_params, params, state, key, batch)
        if backprop_steps is not None:
            # Derivative through g where exact, zero where not: the step's Jacobian is I.
            grads = jax.tree.map(lambda g: jnp.where(exact, g, jax.lax.stop_gradient(g)), grads)
        if accumulate_meta_grads:
            grads, partial = grads
            meta_grads = jax.tree.map(jnp.add, meta_grads, partial)
        updates, opt_state = inner.optimizer.update(
            grads, opt_state, params, meta_params=meta_params
        )
        params = optax.apply_updates(params, updates)
        extra = None if per_step_fn is None else per_step_fn(params, state)
        return (params, state, opt_state, meta_grads), (loss, optax.tree.norm(grads), extra)

    meta_grads = jax.tree.map(jnp.zeros_like, meta_params) if accumulate_meta_grads else None
    if num_steps == 0:
        loss, (_, _) = energy_fn(meta_params, params, state, rng, data)
        metrics = {"loss_before": loss, "grad_norm": jnp.zeros_like(loss)}
        return Adaptation(params, state, metrics, meta_grads)
    carry = (params, state, inner.optimizer.init(params), meta_grads)
    exact = jnp.arange(num_steps) >= num_steps - (
        num_steps if backprop_steps is None else backprop_steps
    )
    keys = jax.random.split(rng, num_steps)
    if num_steps <= MAX_UNROLLED_STEPS and not inner.remat:
        # Short loops are unrolled: XLA then fuses across steps (on CPU a while loop's
        # per-iteration cost dominates small models). The first step runs outside the scan, so
        # that under vmap it still sees the shared initial parameters and its matmuls are
        # single ones instead of a batch of per-task copies (a scan's carry is batched from
        # its first step; benchmarks/suite.py, W1). The rest is one scan, traced once. Not
        # under remat: XLA's optimizations across an unrolled body undo jax.checkpoint
        # (benchmarks/memory.py).
        carry, first = step(carry, (keys[0], exact[0]))
        outputs = jax.tree.map(lambda y: y[None], first)
        if num_steps > 1:
            carry, rest = jax.lax.scan(step, carry, (keys[1:], exact[1:]), unroll=True)
            outputs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outputs, rest)
        losses, grad_norms, per_step = outputs
    else:
        carry, (losses, grad_norms, per_step) = jax.lax.scan(
            jax.checkpoint(step) if inner.remat else step, carry, (keys, exact)
        )
    params, state, _, meta_grads = carry
    metrics = {"loss_before": losses[0], "grad_norm": grad_norms[0]}
    return Adaptation(params, state, metrics, meta_grads, per_step)


def check_task_chunk(task_chunk: TaskChunk, learner_name: str) -> None:
    """Raises a ValueError naming ``learner_name`` unless ``task_chunk`` is None, "auto" or a
    positive int."""
    valid = task_chunk is None or task_chunk == "auto"
    valid |= isinstance(task_chunk, int) and not isinstance(task_chunk, bool) and task_chunk > 0
    if not valid:
        raise ValueError(
            f"{learner_name} task_chunk must be None (vmap all tasks), a positive number of "
            f"tasks processed at a time, or 'auto', got {task_chunk!r}."
        )


def resolve_task_chunk(task_chunk: TaskChunk, num_tasks: int, meta_params: Params) -> int | None:
    """The task strategy for a batch of ``num_tasks`` tasks (at trace time).

    ``"auto"`` is the measured best per backend and model family: on CPU, models with
    convolution kernels (4-D meta-parameters) run ``gcd(num_tasks, device_count)`` tasks at a
    time, one per device (faster than vmap there: benchmarks/suite.py, W2); everything else,
    and every model on GPU/TPU, vmaps all tasks. Other values are returned as they are.
    """
    if not isinstance(task_chunk, str):  # Checked when the learner was built: "auto".
        return task_chunk
    has_conv = any(jnp.ndim(leaf) == 4 for leaf in jax.tree.leaves(meta_params))
    if jax.default_backend() == "cpu" and has_conv:
        return math.gcd(num_tasks, jax.device_count())
    return None


def _chunks(args, task_chunk: int):
    """``args`` (leading task axis n) as n / k chunks of k tasks: task i of chunk j is task
    ``i * n / k + j``, so that chunks split over devices like the task axis does."""
    n = jax.tree.leaves(args)[0].shape[0]
    if task_chunk < 1 or n % task_chunk:
        raise ValueError(f"task_chunk must divide the {n} tasks of the batch, got {task_chunk}.")
    steps = n // task_chunk
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(task_chunk, steps, *x.shape[1:]), 0, 1), args
    )


def _unchunk(outputs):
    """The inverse of `_chunks` for outputs with leading axes (chunks, tasks per chunk)."""
    return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape(-1, *y.shape[2:]), outputs)


def _vmap_chunk(fn: Callable, task_chunk: int) -> Callable:
    """``jax.vmap(fn)`` for chunks of ``task_chunk`` tasks. A chunk of one task calls ``fn``
    on it directly: a vmap of size 1 keeps a batch axis of 1 in every operation, which XLA:CPU
    does not remove, and its batched dots are slower than plain ones (benchmarks/suite.py,
    W3)."""
    if task_chunk != 1:
        return jax.vmap(fn)

    def single(*chunk):
        outputs = fn(*jax.tree.map(lambda x: x[0], chunk))
        return jax.tree.map(lambda y: jnp.expand_dims(y, 0), outputs)

    return single


def map_tasks(fn: Callable, *args, task_chunk: int | None = None):
    """``fn`` applied to every task of ``args`` (pytrees with a leading task axis of size n).

    ``task_chunk=None``: `jax.vmap` over all n tasks at once (best on TPU/GPU). ``task_chunk=k``
    (a divisor of n): `jax.lax.map` over n / k chunks of k tasks, each chunk vmapped (a chunk
    of one task is passed to ``fn`` as it is), so only k tasks' activations are alive at a
    time and, with k = 1, each task's convolutions and matmuls stay ordinary ones (under
    vmap, per-task kernels make them batched or grouped ones, slow on XLA:CPU). Task i of
    chunk j is task ``i * n / k + j``: under sharding the chunks split over devices like the
    task axis does, so no data moves between devices. Same results as vmap up to float
    summation order. `resolve_task_chunk` turns ``"auto"`` into one of these.
    """
    if task_chunk is None:
        return jax.vmap(fn)(*args)
    mapped = _vmap_chunk(fn, task_chunk)
    return _unchunk(jax.lax.map(lambda chunk: mapped(*chunk), _chunks(args, task_chunk)))


def mean_over_tasks(fn: Callable, *args, task_chunk: int | None = None):
    """``fn(*task) -> (grads, metrics)`` for every task of ``args`` (leading task axis of size
    n, mapped as in `map_tasks`); returns the mean of ``grads`` over tasks and the per-task
    ``metrics`` (leading axis n).

    With ``task_chunk=k`` the gradients are summed chunk by chunk in a `jax.lax.scan` carry:
    memory holds the gradients of one chunk's tasks, and no residuals of other tasks are kept
    for a backward pass over the whole batch (as differentiating a mapped loss would).
    """
    if task_chunk is None:
        grads, metrics = jax.vmap(fn)(*args)
        return jax.tree.map(lambda g: jnp.mean(g, 0), grads), metrics

    def accumulate(total, chunk):
        grads, metrics = _vmap_chunk(fn, task_chunk)(*chunk)
        return jax.tree.map(lambda t, g: t + jnp.sum(g, 0), total, grads), metrics

    grad_shapes = jax.eval_shape(fn, *jax.tree.map(lambda x: x[0], args))[0]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), grad_shapes)
    total, metrics = jax.lax.scan(accumulate, zeros, _chunks(args, task_chunk))
    n = jax.tree.leaves(args)[0].shape[0]
    return jax.tree.map(lambda t: t / n, total), _unchunk(metrics)


def stop_gradient_through_adaptation(initial: Params, adapted: Params) -> Params:
    """First-order trick: value of ``adapted``, derivative of ``initial`` (d adapted/d init = I)."""
    return jax.tree.map(lambda p0, p: p0 + jax.lax.stop_gradient(p - p0), initial, adapted)


def adapt_task(
    meta_model: MetaModel,
    inner: InnerLoop,
    meta_params: Params,
    model_state: State,
    rng: PRNGKey,
    data: Dataset,
    *,
    accumulate_meta_grads: bool = False,
    per_step_fn: Callable[[Params, State], Any] | None = None,
    reset_vjp: bool = False,
) -> Adaptation:
    """Resets a task from the meta-parameters and adapts it on ``data`` (its inner energy).

    With ``inner.first_order`` the adaptation is not differentiated: ``params`` carries the
    derivative of ``initial`` (d params / d initial = I), as first-order MAML needs.
    ``accumulate_meta_grads``, ``per_step_fn``: see `run_inner_loop`. ``reset_vjp``: also
    return the reset's VJP (see `Adaptation`). Returns an `Adaptation` with ``initial`` set
    and ``loss_after`` (inner energy at the adapted parameters, not differentiated) added to
    its metrics.
    """
    k_reset, k_inner, k_after = jax.random.split(rng, 3)

    def reset(mp):
        return meta_model.reset(k_reset, mp, model_state)

    if reset_vjp:
        params_0, vjp, state = jax.vjp(reset, meta_params, has_aux=True)
    else:
        (params_0, state), vjp = reset(meta_params), None
    if inner.first_order:
        inner_meta_params, start = jax.lax.stop_gradient((meta_params, params_0))
    else:
        inner_meta_params, start = meta_params, params_0
    adapted = run_inner_loop(
        meta_model.inner_energy,
        inner,
        inner_meta_params,
        start,
        state,
        k_inner,
        data,
        accumulate_meta_grads=accumulate_meta_grads,
        per_step_fn=per_step_fn,
    )
    params = adapted.params
    if inner.first_order:
        params = stop_gradient_through_adaptation(params_0, params)
    metrics = dict(adapted.metrics)
    metrics["loss_after"], _ = meta_model.inner_energy(
        jax.lax.stop_gradient(meta_params),
        jax.lax.stop_gradient(params),
        adapted.state,
        k_after,
        data,
    )
    return adapted._replace(params=params, metrics=metrics, initial=params_0, reset_vjp=vjp)


def adapt_and_score(
    meta_model: MetaModel,
    inner: InnerLoop,
    meta_params: Params,
    model_state: State,
    task: MetaBatch,
    rng: PRNGKey,
) -> tuple[Array, Metrics, Metrics]:
    """Adapts one task on its support set (`adapt_task`) and evaluates the outer energy on its
    query set. Returns ``(outer_loss, inner_metrics, outer_metrics)``; differentiable in
    ``meta_params`` (what MAML differentiates, evolution scores and evaluation reports)."""
    k_adapt, k_outer = jax.random.split(rng)
    adapted = adapt_task(meta_model, inner, meta_params, model_state, k_adapt, task.support)
    loss, (_, outer_metrics) = meta_model.outer_energy(
        meta_params, adapted.params, adapted.state, k_outer, task.query
    )
    return loss, adapted.metrics, outer_metrics


def make_adapt(meta_model: MetaModel, inner: InnerLoop) -> AdaptFn:
    """The ``adapt`` of a learner with an inner loop: ``adapt(state, support, rng,
    num_inner_steps) -> (params, model_state)`` for one task (no task axis), the parameters
    `make_evaluate` scores."""

    def adapt_one(state, support: Dataset, rng: PRNGKey, num_inner_steps: int):
        check_input_rank(meta_model, support.x)
        adapted = adapt_task(
            meta_model,
            inner.with_steps(num_inner_steps),
            state.meta_params,
            state.model_state,
            rng,
            support,
        )
        return adapted.params, adapted.state

    return adapt_one


def make_evaluate(
    meta_model: MetaModel, inner: InnerLoop, task_chunk: TaskChunk = "auto"
) -> EvaluateFn:
    """The ``evaluate`` of a learner with an inner loop: adapt each task on its support set
    with ``num_inner_steps`` steps, return the outer energy's metrics of its query set per task
    (tasks mapped as `map_tasks` and `resolve_task_chunk` say; an evaluation batch that
    ``task_chunk`` does not divide is vmapped whole: the results are the same, only speed and
    memory differ)."""

    def evaluate(state, meta_batch: MetaBatch, rng: PRNGKey, num_inner_steps: Any) -> Metrics:
        check_meta_batch(meta_batch)
        loop = inner.with_steps(num_inner_steps)

        def one_task(task, key):
            return adapt_and_score(
                meta_model, loop, state.meta_params, state.model_state, task, key
            )[2]

        n = num_tasks(meta_batch)
        keys = task_keys(rng, n)
        chunk = resolve_task_chunk(task_chunk, n, state.meta_params)
        chunk = chunk if chunk and n % chunk == 0 else None
        return map_tasks(one_task, meta_batch, keys, task_chunk=chunk)

    return evaluate
