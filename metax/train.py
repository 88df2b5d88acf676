"""The training loop: the one gin-configurable root of an experiment (``train`` in gin files).

Everything a run needs is derived from its arguments and ``seed``: task batches are sampled on
device inside the compiled step from ``fold_in(key, step)``, so a resumed run replays the same
batches. The loop writes to ``workdir``:

* ``config.gin``: the operative gin config (process 0; never overwritten on resume),
* TensorBoard event files (training metrics every ``log_every`` steps, averaged over those
  steps; evaluation every ``eval_every`` steps; steps/s; for image tasks, a grid of the first
  training episode at step 0), through ``clu.metric_writers``,
* ``checkpoints/<step>/``: orbax checkpoints of the `MetaState` (the state is the checkpoint),
* ``final_metrics.json``: flat metric name -> number, with 95% confidence half-widths.
* ``regression_tasks.png`` (regression tasks): a few held-out tasks at the end, ground truth,
  support points and predictions before and after adaptation (also in TensorBoard).

Running again with the same workdir resumes from the latest checkpoint.
"""

import inspect
import json
import signal
import threading
import time
from collections.abc import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

import metax.configurables  # noqa: F401  (gin registrations used by experiment files)
from metax import checks, figures, sharding
from metax import workdir as run_dir
from metax.data.base import TaskSampler, sample_meta_batch
from metax.learner.base import Learner, MetaState

# Independent key streams derived from the seed (fold_in tags).
_INIT, _TRAIN_DATA, _TRAIN_STEP, _EVAL_DATA, _EVAL_STEP, _FIGURE = range(6)
REGRESSION_FIGURE = "regression_tasks.png"
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


NONFINITE = "nonfinite"


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_train_step(learner: Learner, sampler: TaskSampler, meta_batch_size: int, mesh, seed: int):
    """The compiled ``init() -> state`` and ``train_step(state) -> (state, metrics)`` of a run.

    The meta-batch of step ``t`` is drawn inside the step from ``fold_in(key, t)``, task ``i``
    from ``fold_in(., i)``, with the task axis sharded over ``mesh``: each device (and so each
    host) computes only its own tasks, and the batch is the same whatever the mesh. The state
    is replicated and donated. Keys are closed over, so no host data enters a step.

    Divergence guard: if any metric or new meta-parameter is not finite, the step returns the
    old state (step counter advanced) and ``metrics["nonfinite"] = 1``.
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
        new_state, metrics = learner.meta_step(
            state, sample(state.step), jax.random.fold_in(step_key, state.step)
        )
        # A non-finite update is never applied: the step counter moves on (the next step
        # draws new tasks), everything else stays as it was; the host decides what to do.
        finite = _all_finite((metrics, new_state.meta_params))
        skipped = state._replace(step=state.step + 1)
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, skipped)
        return new_state, {**metrics, NONFINITE: 1.0 - finite.astype(jnp.float32)}

    return (
        jax.jit(init, out_shardings=rep),
        jax.jit(train_step, in_shardings=(rep,), out_shardings=(rep, rep), donate_argnums=0),
    )


def first_train_episode(sampler: TaskSampler, seed: int):
    """Task 0 of meta-step 0 of a run (as host arrays): what the model is fed first."""
    data_key = jax.random.fold_in(jax.random.key(seed), _TRAIN_DATA)
    batch = jax.jit(lambda: sample_meta_batch(sampler, jax.random.fold_in(data_key, 0), 1))()
    return jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(batch))


def _check_positive(**numbers: int) -> None:
    for name, value in numbers.items():
        if value < 1:
            raise ValueError(f"train.{name} must be a positive integer, got {value}.")


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


class _StopSignals:
    """Notes SIGTERM (preemption, schedulers) and SIGINT (Ctrl-C) instead of dying, so the
    loop can checkpoint the current step and return.

    With several processes no Python handler is installed: `jax.distributed.initialize`
    installs JAX's preemption notifier for SIGTERM, which a Python handler would replace, and
    orbax's preemption sync point (`reached_preemption`) then stops every process at the same
    step. SIGINT keeps its default there (KeyboardInterrupt, no checkpoint): a Ctrl-C reaches
    one process only, and no public API shares it with the others.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        single_process = jax.process_count() == 1
        if single_process and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame):
        del frame
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self, checkpoints: ocp.CheckpointManager, step: int) -> bool:
        if jax.process_count() > 1:
            if checkpoints.reached_preemption(step):
                self.received = "a preemption notice (SIGTERM)"
                return True
            return False
        return self.received is not None


def _interval_metrics(fetched: list[dict], first_step: int, skip_nonfinite: bool, where: str):
    """Averages the metrics of consecutive steps ``first_step + 1, ...``; raises a
    FloatingPointError at the first non-finite step unless ``skip_nonfinite``."""
    good = [m for m in fetched if not m[NONFINITE]]
    if len(good) < len(fetched) and not skip_nonfinite:
        index = next(i for i, m in enumerate(fetched) if m[NONFINITE])
        bad = sorted(k for k, v in fetched[index].items() if k != NONFINITE and not np.isfinite(v))
        raise FloatingPointError(
            f"Non-finite {', '.join(bad) or 'meta-parameters'} at meta-step "
            f"{first_step + index + 1}: the update was not applied and no checkpoint was "
            f"written after it ({where}). Lower the learning rates, or set "
            f"train.skip_nonfinite = True to skip such updates (counted in "
            f"train/skipped_steps)."
        )
    names = [k for k in fetched[0] if k != NONFINITE]
    metrics = {
        f"train/{k}": float(np.mean([m[k] for m in good])) if good else float("nan") for k in names
    }
    metrics["train/skipped_steps"] = float(len(fetched) - len(good))
    return metrics


def _abstract_state(init, mesh):
    """Shapes, dtypes and (replicated) shardings of the state, without computing it."""
    replicated = sharding.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init),
    )


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
    skip_nonfinite: bool = False,
    allow_config_change: bool = False,
) -> dict[str, float]:
    """Meta-trains ``learner`` on tasks from ``train_sampler`` and evaluates on held-out tasks.

    Args:
      learner: e.g. ``metax.learner.maml(...)``.
      train_sampler: draws meta-training tasks; ``eval_sampler`` (default: the same family)
        draws the held-out evaluation tasks from a separate key stream.
      workdir: output folder (created); an existing run there is resumed from its latest
        readable checkpoint, if the config is the stored one (see ``allow_config_change``).
      meta_batch_size: tasks per meta-step; must divide over all devices.
      num_steps: total meta-steps of the run (a resumed run stops at the same step).
      seed: the only source of randomness of the run.
      log_every, eval_every, checkpoint_every: periods in meta-steps.
      eval_inner_steps: evaluate after each of these numbers of inner steps.
      eval_num_tasks: evaluation tasks (rounded up to a whole number of eval batches).
      eval_batch_size: tasks per evaluation chunk (default ``meta_batch_size``).
      max_checkpoints_to_keep: older checkpoints are deleted.
      skip_nonfinite: a step with a non-finite metric or meta-parameter is never applied; by
        default the run then stops with a FloatingPointError naming the step (checkpoints
        stay those of earlier, finite steps); if True it goes on, counting skipped steps.
      allow_config_change: resume a workdir whose stored config differs from this one
        (the new config is stored beside the old one).

    Returns:
      The final metrics (also written to ``workdir/final_metrics.json``); after SIGTERM or
      SIGINT, ``{"step": ..., "stopped_by_signal": 1.0}`` once the current step is saved.
    """
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
    if not eval_inner_steps or min(eval_inner_steps) < 0:
        raise ValueError(
            f"train.eval_inner_steps must be a non-empty tuple of step counts >= 0, "
            f"got {eval_inner_steps}."
        )
    mesh = sharding.task_mesh()
    sharding.check_divisible(meta_batch_size, mesh)
    sharding.check_divisible(eval_batch_size, mesh, what="evaluation batch (train.eval_batch_size)")
    workdir = run_dir.resolve(workdir)
    run_dir.check_writable(workdir)
    episode = first_train_episode(train_sampler, seed)
    if learner.meta_model is not None:
        checks.check_model_fits_data(learner.meta_model, episode)
    run_dir.check_and_store_config(workdir, gin.operative_config_str(), allow_config_change)

    from clu import metric_writers, periodic_actions  # Imports TensorFlow: only when training.

    is_chief = jax.process_index() == 0
    start_time = time.time()
    init, train_step = make_train_step(learner, train_sampler, meta_batch_size, mesh, seed)
    evaluator = _Evaluator(
        learner,
        eval_sampler or train_sampler,
        mesh,
        seed,
        eval_num_tasks,
        eval_batch_size,
        eval_inner_steps,
    )
    checkpoints = run_dir.checkpoint_manager(workdir, max_checkpoints_to_keep)
    restored, latest = run_dir.restore_latest(checkpoints, _abstract_state(init, mesh))
    if restored is None:
        state = init()
    else:
        state = restored
        logging.info("Resumed from the checkpoint of step %d in %s.", latest, workdir)

    writer = metric_writers.create_default_writer(
        str(workdir), just_logging=not is_chief, asynchronous=True
    )
    progress = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=log_every
    )
    step = int(fetch(state.step))
    if step == 0 and is_chief and figures.is_image_episode(episode):
        writer.write_images(0, {"episode": figures.episode_grid(episode)[None]})
    history, train_metrics = [], {}
    checked_step = step  # Steps up to here are known to be finite.

    def check_history():
        """Fetches the pending steps' metrics; raises at a non-finite step (see above)."""
        nonlocal history, checked_step
        fetched = fetch(history)
        where = f"the last checkpoint, of step {checkpoints.latest_step()}, is intact"
        metrics = _interval_metrics(fetched, checked_step, skip_nonfinite, where)
        checked_step += len(fetched)
        history = []
        return metrics

    logging.info("Training from step %d to %d on %d devices.", step, num_steps, mesh.size)
    with _StopSignals() as signals:
        while step < num_steps:
            state, metrics = train_step(state)
            step += 1
            if history:
                # At most two steps in flight: wait (no copy) for the previous one. Unbounded
                # queues of multi-device executions deadlock XLA:CPU's in-process all-reduce
                # (seen with 8 virtual devices on 2 cores); on accelerators one queued step
                # keeps the device busy all the same.
                jax.block_until_ready(history[-1])
            history.append(metrics)
            stop = signals.should_stop(checkpoints, step)
            if step % log_every == 0 or step == num_steps:
                # The only device-to-host copy of the loop: the interval's metrics.
                train_metrics = check_history()
                writer.write_scalars(step, train_metrics)
            progress(step)
            if step % eval_every == 0 and step < num_steps and not stop:
                writer.write_scalars(step, evaluator(state))
            if step % checkpoint_every == 0 or step == num_steps or stop:
                if history:
                    check_history()  # Never checkpoint past a non-finite step.
                checkpoints.save(step, args=ocp.args.StandardSave(state))
            if stop:
                checkpoints.wait_until_finished()
                checkpoints.close()
                writer.flush()
                writer.close()
                logging.warning(
                    "Received %s at step %d: saved the checkpoint of step %d in %s; exiting. "
                    "Run the same command to resume.",
                    signals.received,
                    step,
                    step,
                    workdir,
                )
                return {"step": float(step), "stopped_by_signal": 1.0}
    checkpoints.wait_until_finished()
    checkpoints.close()

    final = {"step": float(step), **train_metrics, **evaluator(state)}
    writer.write_scalars(step, {k: v for k, v in final.items() if k.startswith("eval/")})
    held_out = eval_sampler or train_sampler
    if figures.has_regression_curves(learner, held_out):
        inner_steps = max(eval_inner_steps)
        curves = figures.regression_curves(
            learner, state, held_out, jax.random.fold_in(jax.random.key(seed), _FIGURE), inner_steps
        )
        image = figures.regression_figure(
            figures.RegressionCurves(*fetch(tuple(curves))),
            title=f"held-out tasks after {step} meta-steps, {inner_steps} inner steps",
        )
        writer.write_images(step, {"regression_tasks": image[None]})
        if is_chief:
            figures.save_png(image, workdir / REGRESSION_FIGURE)
    writer.flush()
    writer.close()
    final["wall_time_s"] = time.time() - start_time
    if is_chief:
        (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2, sort_keys=True))
    logging.info("Final metrics: %s", json.dumps(final, sort_keys=True))
    return final


def evaluate_run(workdir: str, num_tasks: int | None = None, step: int | None = None) -> dict:
    """Evaluates a run's checkpoint on its held-out tasks, with the run's settings.

    The run's `train` arguments (learner, samplers, seed, evaluation settings) come from the
    parsed gin config, i.e. the config stored in ``workdir`` (see ``launch/evaluate.py``). Reads
    only complete checkpoints, so it is safe on a run that is still going. Returns ``{"step",
    "eval/...", ...}`` (means and 95% half-widths; the same tasks and numbers as the run's own
    final evaluation) and writes them to ``workdir/eval_step_<step>.json`` (process 0).
    """
    arguments = {
        name: parameter.default
        for name, parameter in inspect.signature(train).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    arguments.update(gin.get_bindings("train"))
    for required in ("learner", "train_sampler"):
        if arguments.get(required) is None:
            raise ValueError(f"The stored config binds no train.{required}; is it a metax run?")
    learner, meta_batch_size = arguments["learner"], arguments["meta_batch_size"]
    eval_batch_size = arguments["eval_batch_size"] or meta_batch_size
    mesh = sharding.task_mesh()
    sharding.check_divisible(eval_batch_size, mesh, what="evaluation batch (train.eval_batch_size)")
    init, _ = make_train_step(
        learner, arguments["train_sampler"], meta_batch_size, mesh, arguments["seed"]
    )
    workdir = run_dir.resolve(workdir)
    manager = run_dir.checkpoint_manager(workdir)
    state, step = run_dir.restore_latest(
        manager, _abstract_state(init, mesh), set_aside=False, step=step
    )
    manager.close()
    if state is None:
        raise FileNotFoundError(f"No complete checkpoint in {workdir}: nothing to evaluate yet.")
    evaluator = _Evaluator(
        learner,
        arguments["eval_sampler"] or arguments["train_sampler"],
        mesh,
        arguments["seed"],
        num_tasks or arguments["eval_num_tasks"],
        eval_batch_size,
        arguments["eval_inner_steps"],
    )
    results = {"step": float(step), **evaluator(state)}
    if jax.process_index() == 0:
        results_json = json.dumps(results, indent=2, sort_keys=True)
        (workdir / f"eval_step_{step}.json").write_text(results_json)
    return results
