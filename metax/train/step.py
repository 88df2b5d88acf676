"""The compiled meta-step of a run: task batches drawn on device or fed from the host, the
divergence guard."""

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from metax import checks
from metax.data import host
from metax.data.base import MetaBatch, TaskSampler, sample_meta_batch
from metax.learner.base import Learner, MetaState
from metax.learner.optimizers import injected_learning_rates
from metax.train import sharding
from metax.types import Metrics

# Independent key streams derived from the seed (fold_in tags).
INIT, TRAIN_DATA, TRAIN_STEP, EVAL_DATA, EVAL_STEP, FIGURE, VAL_DATA, VAL_STEP = range(8)
NONFINITE = "nonfinite"


def fetch(tree):
    """Copies replicated device arrays to host numpy arrays. Works with several processes,
    where a replicated array is not fully addressable by any one of them (device_get fails)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def all_finite(tree) -> jax.Array:
    """A boolean scalar: every entry of every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def guard_nonfinite(meta_step):
    """Wraps ``meta_step(state, *args) -> (state, metrics)`` so that a non-finite update is
    never applied: if any metric or new meta-parameter is not finite, it returns the old state
    with the step counter advanced (the next step draws new tasks) and
    ``metrics["nonfinite"] = 1`` (else 0); the host decides what to do."""

    def guarded(state: MetaState, *args) -> tuple[MetaState, Metrics]:
        new_state, metrics = meta_step(state, *args)
        finite = all_finite((metrics, new_state.meta_params))
        skipped = state._replace(step=state.step + 1)
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, skipped)
        return new_state, {**metrics, NONFINITE: 1.0 - finite.astype(jnp.float32)}

    return guarded


def report_learning_rates(meta_step):
    """Wraps ``meta_step`` to add the outer learning rate to its metrics, where the outer
    optimizer keeps it in its state (`metax.learner.inject_hyperparams`)."""

    def reporting(state: MetaState, *args) -> tuple[MetaState, Metrics]:
        new_state, metrics = meta_step(state, *args)
        return new_state, {**metrics, **injected_learning_rates(new_state.opt_state)}

    return reporting


class NonfiniteStepError(FloatingPointError):
    """A meta-step whose metrics or new meta-parameters were not finite (`make_train_step`'s
    ``on_nonfinite="raise"``). Its update was not applied: ``state`` is the last finite state,
    its step counter past the skipped step; ``metrics`` the step's metrics."""

    def __init__(self, message: str, state, metrics):
        super().__init__(message)
        self.state, self.metrics = state, metrics


def _raise_on_nonfinite(train_step):
    """``train_step`` that waits for each step's non-finite flag and raises a
    `NonfiniteStepError` naming the step and the non-finite metrics."""

    def checked(state, *args):
        state, metrics = train_step(state, *args)
        if fetch(metrics[NONFINITE]):
            values = fetch(metrics)
            bad = sorted(k for k, v in values.items() if k != NONFINITE and not np.isfinite(v))
            step = int(fetch(state.step))
            raise NonfiniteStepError(
                f"Non-finite {', '.join(bad) or 'meta-parameters'} at meta-step {step}: the "
                f"update was not applied (the error's .state is the last finite state). Lower "
                f"the learning rates; make_train_step(..., on_nonfinite='skip') skips such "
                f"steps instead (metrics['nonfinite'] == 1).",
                state,
                values,
            )
        return state, metrics

    return checked


def make_train_step(
    learner: Learner,
    sampler: TaskSampler | host.HostTaskSampler,
    meta_batch_size: int,
    mesh,
    seed: int,
    on_nonfinite: str = "raise",
):
    """The compiled ``init() -> state`` and ``train_step(state) -> (state, metrics)`` of a run.

    The meta-batch of step ``t`` is drawn inside the step from ``fold_in(key, t)``, task ``i``
    from ``fold_in(., i)``, with the task axis sharded over ``mesh``: each device (and so each
    host) computes only its own tasks, and the batch is the same whatever the mesh. The state
    is replicated and donated. Keys are closed over, so no host data enters a step.

    With a host-fed sampler (`metax.data.host`) the step is ``train_step(state, batch)``
    instead, ``batch`` the step's task-sharded meta-batch from `train_batches`.

    Divergence guard: if any metric or new meta-parameter is not finite, the step returns the
    old state (step counter advanced) and ``metrics["nonfinite"] = 1``; with
    ``on_nonfinite="raise"`` (the default) ``train_step`` then raises a `NonfiniteStepError`
    naming the step. Raising waits for each step's flag (a host sync per step); ``"skip"``
    returns at once and leaves the check to the caller (`metax.train.train` checks every
    ``log_every`` steps and counts skipped steps).

    Before anything compiles, the sampler's first task is checked against the model with
    concrete labels (`metax.checks.check_model_fits_data`: shapes, input rank, classes).
    """
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}.")
    sharding.check_divisible(meta_batch_size, mesh)
    if learner.meta_model is not None:
        checks.check_model_fits_data(learner.meta_model, first_episode(sampler, seed))
    init, train_step = _jitted_steps(learner, sampler, meta_batch_size, mesh, seed)
    return init, train_step if on_nonfinite == "skip" else _raise_on_nonfinite(train_step)


def _jitted_steps(learner: Learner, sampler, meta_batch_size: int, mesh, seed: int):
    """`make_train_step`'s jitted init and (guarded) step."""
    rep, tasks = sharding.replicated(mesh), sharding.task_sharded(mesh)
    root_key = jax.random.key(seed)
    step_key = jax.random.fold_in(root_key, TRAIN_STEP)
    guarded_step = guard_nonfinite(report_learning_rates(learner.meta_step))

    if isinstance(sampler, host.HostTaskSampler):
        init_from = jax.jit(
            lambda batch: learner.init(
                jax.random.fold_in(root_key, INIT), host.scale_images(batch)
            ),
            in_shardings=(tasks,),
            out_shardings=rep,
        )

        def host_init():
            return init_from(next(train_batches(sampler, seed, 0, 1, meta_batch_size, mesh)))

        def host_step(state: MetaState, batch: MetaBatch):
            rng = jax.random.fold_in(step_key, state.step)
            return guarded_step(state, host.scale_images(batch), rng)

        return host_init, jax.jit(
            host_step, in_shardings=(rep, tasks), out_shardings=(rep, rep), donate_argnums=0
        )

    init, train_step = _device_fed(learner, sampler, meta_batch_size, mesh, seed)
    return (
        jax.jit(init, out_shardings=rep),
        jax.jit(train_step, in_shardings=(rep,), out_shardings=(rep, rep), donate_argnums=0),
    )


def _device_fed(learner: Learner, sampler: TaskSampler, meta_batch_size: int, mesh, seed: int):
    """The uncompiled ``init`` and guarded ``train_step`` of a run whose tasks are drawn on
    device (see `make_train_step`)."""
    tasks = sharding.task_sharded(mesh)
    root_key = jax.random.key(seed)
    data_key = jax.random.fold_in(root_key, TRAIN_DATA)
    step_key = jax.random.fold_in(root_key, TRAIN_STEP)
    guarded_step = guard_nonfinite(report_learning_rates(learner.meta_step))

    def sample(step):
        batch = sample_meta_batch(sampler, jax.random.fold_in(data_key, step), meta_batch_size)
        return jax.lax.with_sharding_constraint(batch, tasks)

    def init():
        return learner.init(jax.random.fold_in(root_key, INIT), sample(0))

    def train_step(state: MetaState):
        return guarded_step(state, sample(state.step), jax.random.fold_in(step_key, state.step))

    return init, train_step


def make_multi_step(
    learner: Learner,
    sampler: TaskSampler,
    meta_batch_size: int,
    mesh,
    seed: int,
    max_steps: int,
):
    """The compiled ``train_steps(state, n) -> (state, metrics)``: ``n`` (1 to ``max_steps``,
    a traced int32, so any ``n`` runs the same executable) consecutive meta-steps of
    `make_train_step` in one device call, a ``lax.fori_loop`` over the same step. Each metric
    comes back with a leading axis of ``max_steps``: entry ``i < n`` is step ``i``'s, as
    ``train_step`` returns it (the rest is zeros). One host visit per ``n`` steps; the step
    and its divergence guard are unchanged, so each step computes what ``train_step`` does.
    On-device samplers only (a host-fed batch enters per step)."""
    if isinstance(sampler, host.HostTaskSampler):
        raise ValueError(
            "make_multi_step draws tasks on device; host-fed samplers step one by one."
        )
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    sharding.check_divisible(meta_batch_size, mesh)
    rep = sharding.replicated(mesh)
    _, train_step = _device_fed(learner, sampler, meta_batch_size, mesh, seed)

    def train_steps(state: MetaState, n):
        _, step_metrics = jax.eval_shape(train_step, state)
        buffer = jax.tree.map(lambda m: jnp.zeros((max_steps, *m.shape), m.dtype), step_metrics)

        def body(i, carry):
            state, buffer = carry
            state, metrics = train_step(state)
            return state, jax.tree.map(lambda b, m: b.at[i].set(m), buffer, metrics)

        return jax.lax.fori_loop(0, n, body, (state, buffer))

    return jax.jit(
        train_steps, in_shardings=(rep, None), out_shardings=(rep, rep), donate_argnums=0
    )


def train_batches(
    sampler: host.HostTaskSampler,
    seed: int,
    first_step: int,
    last_step: int,
    meta_batch_size: int,
    mesh,
) -> Iterator[MetaBatch]:
    """The host-fed meta-batches of steps ``first_step .. last_step - 1`` of a run, built
    ahead (`metax.data.host.meta_batches`)."""
    mine = host.local_task_ids(sharding.task_sharded(mesh), meta_batch_size)
    logging.info(
        "Host feed: process %d builds tasks %s of each meta-batch of %d.",
        jax.process_index(),
        ",".join(map(str, mine)),
        meta_batch_size,
    )
    return host.meta_batches(
        sampler, seed, TRAIN_DATA, first_step, last_step, meta_batch_size, mesh
    )


def first_episode(sampler: TaskSampler | host.HostTaskSampler, seed: int, stream: int = TRAIN_DATA):
    """Task 0 of batch 0 of a key stream of the run (as host arrays): by default what the
    model is fed first; with ``stream=EVAL_DATA``, the first held-out evaluation task."""
    if isinstance(sampler, host.HostTaskSampler):
        batch = host.scale_images(host.host_meta_batch(sampler, seed, stream, 0, np.arange(1)))
        return jax.tree.map(lambda x: x[0], batch)
    batch = _first_batch(sampler, seed, stream)
    return jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(batch))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _first_batch(sampler: TaskSampler, seed: int, stream: int) -> MetaBatch:
    """Batch 0 (one task) of a key stream, compiled once per sampler, seed and stream."""
    data_key = jax.random.fold_in(jax.random.key(seed), stream)
    return sample_meta_batch(sampler, jax.random.fold_in(data_key, 0), 1)


def abstract_state(init, mesh):
    """Shapes, dtypes and (replicated) shardings of the state, without computing it."""
    replicated = sharding.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init),
    )
