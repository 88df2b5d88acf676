"""The training loop: the one gin-configurable root of an experiment (``train`` in gin files).

Everything a run needs is derived from its arguments and ``seed``: task batches are sampled on
device inside the compiled step from ``fold_in(key, step)``, so a resumed run replays the same
batches. The loop writes to ``workdir``:

* ``config.gin``: the operative gin config (process 0; never overwritten on resume),
* TensorBoard event files (training metrics every ``log_every`` steps, averaged over those
  steps; evaluation every ``eval_every`` steps; steps/s), through ``clu.metric_writers``,
* ``checkpoints/<step>/``: orbax checkpoints of the `MetaState` (the state is the checkpoint),
* ``final_metrics.json``: flat metric name -> number, with 95% confidence half-widths.

Running again with the same workdir resumes from the latest checkpoint.
"""

import json
import os
import time
from collections.abc import Sequence

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

import metax.configurables  # noqa: F401  (gin registrations used by experiment files)
from metax import sharding
from metax.data.base import TaskSampler, sample_meta_batch
from metax.learner.base import Learner, MetaState

# Independent key streams derived from the seed (fold_in tags).
_INIT, _TRAIN_DATA, _TRAIN_STEP, _EVAL_DATA, _EVAL_STEP = range(5)
CI95_Z = 1.959963984540054


def mean_and_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(CI95_Z * values.std(ddof=1) / np.sqrt(values.size))


def fetch(tree):
    """Copies replicated device arrays to host numpy arrays. Works with several processes,
    where a replicated array is not fully addressable by any one of them (device_get fails)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def make_train_step(learner: Learner, sampler: TaskSampler, meta_batch_size: int, mesh, seed: int):
    """The compiled ``init() -> state`` and ``train_step(state) -> (state, metrics)`` of a run.

    The meta-batch of step ``t`` is drawn inside the step from ``fold_in(key, t)``, task ``i``
    from ``fold_in(., i)``, with the task axis sharded over ``mesh``: each device (and so each
    host) computes only its own tasks, and the batch is the same whatever the mesh. The state
    is replicated and donated. Keys are closed over, so no host data enters a step.
    """
    sharding.check_divisible(meta_batch_size, mesh)
    rep, tasks = sharding.replicated(mesh), sharding.task_sharded(mesh)
    root_key = jax.random.key(seed)
    data_key = jax.random.fold_in(root_key, _TRAIN_DATA)
    step_key = jax.random.fold_in(root_key, _TRAIN_STEP)

    def sample(step):
        batch = sample_meta_batch(sampler, jax.random.fold_in(data_key, step), meta_batch_size)
        return jax.lax.with_sharding_constraint(batch, tasks)

    def init():
        return learner.init(jax.random.fold_in(root_key, _INIT), sample(0))

    def train_step(state: MetaState):
        return learner.meta_step(
            state, sample(state.step), jax.random.fold_in(step_key, state.step)
        )

    return (
        jax.jit(init, out_shardings=rep),
        jax.jit(train_step, in_shardings=(rep,), out_shardings=(rep, rep), donate_argnums=0),
    )


def _check_positive(**numbers: int) -> None:
    for name, value in numbers.items():
        if value < 1:
            raise ValueError(f"train.{name} must be a positive integer, got {value}.")


def _write_text_once(path: str, text: str) -> None:
    if jax.process_index() == 0 and not os.path.exists(path):
        with open(path, "w") as f:
            f.write(text)


class _Evaluator:
    """Evaluates on a fixed set of held-out tasks, in chunks, compiled once per step count."""

    def __init__(self, learner, sampler, mesh, seed, num_tasks, batch_size, inner_steps):
        self.num_chunks = -(-num_tasks // batch_size)
        self.num_tasks = self.num_chunks * batch_size
        self.inner_steps = tuple(inner_steps)
        data_key = jax.random.fold_in(jax.random.key(seed), _EVAL_DATA)
        step_key = jax.random.fold_in(jax.random.key(seed), _EVAL_STEP)
        tasks = sharding.task_sharded(mesh)

        def evaluate_chunk(state, chunk, num_inner_steps):
            batch = sample_meta_batch(sampler, data_key, batch_size, chunk * batch_size)
            batch = jax.lax.with_sharding_constraint(batch, tasks)
            return learner.evaluate(
                state, batch, jax.random.fold_in(step_key, chunk), num_inner_steps
            )

        self._evaluate_chunk = jax.jit(
            evaluate_chunk, static_argnums=2, out_shardings=sharding.replicated(mesh)
        )

    def __call__(self, state: MetaState) -> dict[str, float]:
        results = {"eval/num_tasks": float(self.num_tasks)}
        for k in self.inner_steps:
            # Fetched chunk by chunk: a long queue of multi-device executions can deadlock
            # XLA:CPU's collectives (see the training loop), and evaluation is not hot.
            chunks = [fetch(self._evaluate_chunk(state, c, k)) for c in range(self.num_chunks)]
            per_task = jax.tree.map(lambda *a: np.concatenate(a), *chunks)
            for name, values in per_task.items():
                mean, ci95 = mean_and_ci95(values)
                results[f"eval/steps_{k}/{name}"] = mean
                results[f"eval/steps_{k}/{name}_ci95"] = ci95
        return results


@gin.configurable("train", module="metax.train")
def train(
    *,
    learner: Learner,
    train_sampler: TaskSampler,
    workdir: str,
    eval_sampler: TaskSampler | None = None,
    meta_batch_size: int = 25,
    num_steps: int = 1000,
    seed: int = 0,
    log_every: int = 100,
    eval_every: int = 1000,
    eval_inner_steps: Sequence[int] = (1, 5, 10),
    eval_num_tasks: int = 600,
    eval_batch_size: int | None = None,
    checkpoint_every: int = 1000,
    max_checkpoints_to_keep: int = 3,
) -> dict[str, float]:
    """Meta-trains ``learner`` on tasks from ``train_sampler`` and evaluates on held-out tasks.

    Args:
      learner: e.g. ``metax.learner.maml(...)``.
      train_sampler: draws meta-training tasks; ``eval_sampler`` (default: the same family)
        draws the held-out evaluation tasks from a separate key stream.
      workdir: output folder (created); an existing run there is resumed.
      meta_batch_size: tasks per meta-step; must divide over all devices.
      num_steps: total meta-steps of the run (a resumed run stops at the same step).
      seed: the only source of randomness of the run.
      log_every, eval_every, checkpoint_every: periods in meta-steps.
      eval_inner_steps: evaluate after each of these numbers of inner steps.
      eval_num_tasks: evaluation tasks (rounded up to a whole number of eval batches).
      eval_batch_size: tasks per evaluation chunk (default ``meta_batch_size``).
      max_checkpoints_to_keep: older checkpoints are deleted.

    Returns:
      The final metrics (also written to ``workdir/final_metrics.json``).
    """
    from clu import metric_writers, periodic_actions  # Imports TensorFlow: only when training.

    eval_batch_size = eval_batch_size or meta_batch_size
    _check_positive(
        meta_batch_size=meta_batch_size,
        num_steps=num_steps,
        log_every=log_every,
        eval_every=eval_every,
        eval_num_tasks=eval_num_tasks,
        eval_batch_size=eval_batch_size,
        checkpoint_every=checkpoint_every,
        max_checkpoints_to_keep=max_checkpoints_to_keep,
    )
    mesh = sharding.task_mesh()
    sharding.check_divisible(meta_batch_size, mesh)
    sharding.check_divisible(eval_batch_size, mesh, what="evaluation batch (train.eval_batch_size)")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0
    start_time = time.time()

    init, train_step = make_train_step(learner, train_sampler, meta_batch_size, mesh, seed)
    state = init()
    evaluator = _Evaluator(
        learner,
        eval_sampler or train_sampler,
        mesh,
        seed,
        eval_num_tasks,
        eval_batch_size,
        eval_inner_steps,
    )

    checkpoints = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_checkpoints_to_keep, create=True),
    )
    latest = checkpoints.latest_step()
    if latest is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = checkpoints.restore(latest, args=ocp.args.StandardRestore(abstract))
        logging.info("Resumed from the checkpoint of step %d in %s.", latest, workdir)
    _write_text_once(os.path.join(workdir, "config.gin"), gin.operative_config_str())

    writer = metric_writers.create_default_writer(
        workdir, just_logging=not is_chief, asynchronous=True
    )
    progress = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=log_every
    )
    step = int(fetch(state.step))
    history, train_metrics = [], {}
    logging.info("Training from step %d to %d on %d devices.", step, num_steps, mesh.size)
    while step < num_steps:
        state, metrics = train_step(state)
        step += 1
        if history:
            # At most two steps in flight: wait (no copy) for the previous one. Unbounded
            # queues of multi-device executions deadlock XLA:CPU's in-process all-reduce
            # (seen with 8 virtual devices on 2 cores); on accelerators one queued step keeps
            # the device busy all the same.
            jax.block_until_ready(history[-1])
        history.append(metrics)
        if step % log_every == 0 or step == num_steps:
            # The only device-to-host copy of the loop: the interval's metrics, averaged.
            fetched = fetch(history)
            train_metrics = {
                f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]
            }
            history = []
            writer.write_scalars(step, train_metrics)
        progress(step)
        if step % eval_every == 0 and step < num_steps:
            writer.write_scalars(step, evaluator(state))
        if step % checkpoint_every == 0 or step == num_steps:
            checkpoints.save(step, args=ocp.args.StandardSave(state))
    checkpoints.wait_until_finished()
    checkpoints.close()

    final = {"step": float(step), **train_metrics, **evaluator(state)}
    writer.write_scalars(step, {k: v for k, v in final.items() if k.startswith("eval/")})
    writer.flush()
    writer.close()
    final["wall_time_s"] = time.time() - start_time
    if is_chief:
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(final, f, indent=2, sort_keys=True)
    logging.info("Final metrics: %s", json.dumps(final, sort_keys=True))
    return final
