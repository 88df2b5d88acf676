"""The training loop: ``train(config, workdir)`` runs a `TrainConfig` in a workdir.

A run goes through four phases, each a function below:

1. start-up (`start_up`): checks that the pieces fit, that the workdir's stored config is this
   one, compiles the meta-step and resumes from the latest readable checkpoint;
2. training (`train_steps`): meta-steps, and after each device call the periodic work that is
   due (`PERIODIC`: log, evaluate or validate, checkpoint; one rule, `is_due`), until the last
   step or a stop signal (SIGTERM, Ctrl-C: the current step is saved);
3. final evaluation (`final_evaluation`): the meta-test evaluation of the last (or, with
   validation, the best) checkpoint and the figure of held-out tasks;
4. finished (`finish`): ``final_metrics.json`` and the summary.

Everything a run computes derives from its config and ``seed``: task batches are sampled on
device inside the compiled step from ``fold_in(key, step)`` (or, host-fed, from a generator
seeded with the seed, step and task), so a resumed run replays the same batches. The workdir
holds ``config.gin`` (the operative gin config), TensorBoard event files, ``checkpoints/<step>``
(the `MetaState`), ``final_metrics.json`` and a figure of held-out tasks.
"""

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from metax.data.host import HostTaskSampler, Sampler
from metax.learner.base import MetaState
from metax.train import checkpoints as run_checkpoints
from metax.train import figures, sharding
from metax.train import workdir as run_dir
from metax.train.config import TrainConfig
from metax.train.console import Console
from metax.train.evaluation import Evaluator
from metax.train.host_memory import release_freed_memory
from metax.train.signals import Stopped, StopSignals
from metax.train.step import (
    EVAL_DATA,
    FIGURE,
    NONFINITE,
    abstract_state,
    fetch,
    first_episode,
    make_multi_step,
    make_train_step,
    train_batches,
)

REGRESSION_FIGURE = "regression_tasks.png"
EPISODE_FIGURE = "held_out_episode.png"
FIGURES = (REGRESSION_FIGURE, EPISODE_FIGURE)
FINAL_METRICS = "final_metrics.json"
# The training metrics of the last checkpoint's interval: what the report of a run resumed at
# its last step (stopped during its final evaluation) needs.
TRAIN_METRICS = "train_metrics.json"

StepCall = Callable[[MetaState, int], tuple[MetaState, dict, int | None]]


def train(
    config: TrainConfig,
    workdir: str,
    *,
    allow_config_change: bool = False,
    verbose: bool = True,
    signals: StopSignals | None = None,
) -> dict[str, float]:
    """Meta-trains ``config.learner`` in ``workdir`` and evaluates it on held-out tasks.

    Args:
      config: the run's settings (`TrainConfig`; gin's ``train``).
      workdir: output folder (created); a run there is resumed from its latest readable
        checkpoint if the config is the stored one (schedule bindings such as
        ``train.num_steps`` may change; see `metax.train.workdir.SCHEDULE_BINDINGS`). One run
        at a time: another process training there is refused (`metax.train.workdir.RunLock`).
      allow_config_change: resume a workdir whose stored config differs from this one (the
        new config is stored beside the old one).
      verbose: process 0 prints progress to stdout (`metax.train.console`: a progress bar on a
        terminal, a line every ``log_every`` steps otherwise) and a summary at the end.
      signals: the stop signals' handler (`metax.train.signals.StopSignals`), when the caller
        installed one before building ``config`` (the launcher does); else one is installed.

    Returns:
      The final metrics (also written to ``workdir/final_metrics.json``): ``step``, the last
      interval's ``train/*`` means, ``eval/<setting>/<metric>`` means and ``_ci95``
      half-widths (with validation also ``val/*`` and ``best/step``) and ``wall_time_s``. A
      finished run (``final_metrics.json`` of step ``num_steps``) is left as it is: its report
      is returned. After SIGTERM or SIGINT, ``{"step": ..., "stopped_by_signal": 1.0}`` once
      the run is where a rerun of the same command continues it.

    Raises:
      ValueError, OSError, FloatingPointError, ...: with one line naming the problem and its
      fix (a changed config, a workdir in use, a full disk, a diverged step, ...).
    """
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(signals or StopSignals())
        try:
            run = start_up(config, workdir, allow_config_change, verbose, signals)
        except Stopped as stop:
            return stopped_in_start_up(stop, workdir)
        if isinstance(run, dict):
            return run  # A finished run's report.
        with run:
            train_steps(run, signals)
            if signals.received is not None:
                return stopped(run, signals.received)
            try:
                final = final_evaluation(run, signals)
            except Stopped as stop:
                return stopped(run, stop.signal_name, "the final evaluation")
    return finish(run, final)


class PendingMetrics:
    """The metrics of device calls not yet fetched: at most two calls in flight, fetched (the
    loop's only device-to-host copy) when a log or checkpoint is due, and checked: a
    non-finite step stops the run unless ``skip_nonfinite``."""

    def __init__(self, first_step: int, skip_nonfinite: bool):
        self.checked_step = first_step  # Steps up to here are known to be finite.
        self.skip_nonfinite = skip_nonfinite
        self._calls: list[tuple[dict, int | None]] = []

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, metrics: dict, steps: int | None) -> None:
        """A call's metrics: of one step (``steps`` None) or stacked over ``steps`` steps."""
        if self._calls:
            # Wait (no copy) for the previous call: unbounded queues of multi-device
            # executions deadlock XLA:CPU's in-process all-reduce (seen with 8 virtual devices
            # on 2 cores); on accelerators one queued call keeps the device busy all the same.
            jax.block_until_ready(self._calls[-1][0])
        self._calls.append((metrics, steps))

    def collect(self, last_checkpoint: int | None) -> dict[str, float]:
        """The pending steps' mean ``train/*`` metrics and ``train/skipped_steps``; raises a
        FloatingPointError at the first non-finite step (see `interval_metrics`)."""
        fetched_calls = fetch([metrics for metrics, _ in self._calls])
        fetched = [
            step_metrics
            for metrics, (_, n) in zip(fetched_calls, self._calls, strict=True)
            for step_metrics in ([metrics] if n is None else _unstack(metrics, n))
        ]
        where = (
            "no checkpoint had been written yet"
            if last_checkpoint is None
            else f"the last checkpoint, of step {last_checkpoint}, is intact"
        )
        metrics = interval_metrics(fetched, self.checked_step, self.skip_nonfinite, where)
        self.checked_step += len(fetched)
        self._calls = []
        return metrics


class Selection(NamedTuple):
    """Model selection while a run runs (with `Validation`): the evaluator of the validation
    tasks, the manager of the best checkpoint and the metric it keeps the best of."""

    evaluator: Evaluator
    best: ocp.CheckpointManager
    metric: str


@dataclasses.dataclass
class Run:
    """A run while it runs: its settings, compiled functions, checkpoint managers, writers,
    the workdir's lock, and where it is (``state`` of meta-step ``step``). A context manager:
    leaving it closes everything (pending saves finish, files close, the lock is released),
    and a failure to write the workdir, here or inside, becomes one `StorageError`."""

    config: TrainConfig
    workdir: epath.Path
    mesh: Any
    init: Callable[[], MetaState]
    step_call: StepCall
    evaluator: Evaluator
    selection: Selection | None
    checkpoints: ocp.CheckpointManager
    lock: run_dir.RunLock
    console: Console
    writer: Any
    state: MetaState
    step: int
    pending: PendingMetrics
    start_time: float
    config_to_store: tuple[str, str] | None  # (file name, text) once the run checkpoints.
    train_metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def is_chief(self) -> bool:
        return jax.process_index() == 0

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        closing: list[Exception] = []
        for close in (self.checkpoints.close, self.writer.close):
            try:
                close()
            except Exception as problem:  # noqa: BLE001 (reported below, after all closed)
                closing.append(problem)
        if self.selection is not None:
            self.selection.best.close()
        self.lock.release()
        first = error if error is not None else (closing[0] if closing else None)
        if first is not None and run_dir.is_storage_error(first):
            raise run_dir.storage_error(first, self.workdir) from None
        if error is None and closing:
            raise closing[0]


# Phase 1: start-up.


def start_up(
    config: TrainConfig,
    workdir: str,
    allow_config_change: bool,
    verbose: bool,
    signals: StopSignals,
) -> "Run | dict[str, float]":
    """Takes the workdir's lock and checks what can be checked before compiling (the mesh
    divides the batches, the workdir is writable, its stored config is this one, the model
    fits the data, its checkpoints are of this run and not past ``num_steps``); builds the
    compiled step and the evaluators and restores the latest readable checkpoint. Writes
    nothing but the lock before the run is accepted. Returns the run, or a finished run's
    report. Raises `Stopped` if a stop signal arrived (nothing to save yet)."""
    start_time = time.time()
    mesh = sharding.task_mesh()
    sharding.check_divisible(config.meta_batch_size, mesh)
    sharding.check_divisible(
        config.eval_batch_size, mesh, what="evaluation batch (Evaluation.batch_size)"
    )
    path = run_dir.resolve(workdir)
    run_dir.check_writable(path)
    lock = run_dir.RunLock(path)
    lock.acquire()
    try:
        accepted = _accept(config, path, lock, allow_config_change, verbose, signals, start_time)
    except BaseException:
        lock.release()
        raise
    if isinstance(accepted, dict):  # A finished run: nothing to do.
        lock.release()
    return accepted


def _accept(config, workdir, lock, allow_config_change, verbose, signals, start_time):
    """`start_up` once the lock is held."""
    config_text = gin.operative_config_str()
    store_as = run_dir.config_to_store(workdir, config_text, allow_config_change)
    report = finished_report(workdir, config.num_steps)
    if report is not None:
        _say_finished(report, workdir, verbose)
        return report
    mesh = sharding.task_mesh()
    init, train_step = make_train_step(  # Checks the model against the first task.
        config.learner,
        config.train_sampler,
        config.meta_batch_size,
        mesh,
        config.seed,
        on_nonfinite="skip",  # Checked at each log and checkpoint (`PendingMetrics`).
    )
    signals.check("start-up")
    console = Console(
        enabled=jax.process_index() == 0 and verbose,
        num_steps=config.num_steps,
        meta_batch_size=config.meta_batch_size,
    )
    checkpoints = run_checkpoints.checkpoint_manager(workdir, config.checkpoints.max_to_keep)
    try:
        state, step = _resume(init, mesh, checkpoints, console, config.num_steps)
        signals.check("start-up")
        selection = _selection(config, workdir, mesh)
    except BaseException:
        checkpoints.close()
        raise
    from metax.train import writers  # Imports TensorBoard's protos: only when training.

    run = Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        init=init,
        step_call=_step_call(config, mesh, train_step, step),
        evaluator=_evaluator(config, mesh, config.eval_sampler, "eval"),
        selection=selection,
        checkpoints=checkpoints,
        lock=lock,
        console=console,
        writer=writers.create_writer(workdir, jax.process_index() == 0),
        state=state,
        step=step,
        pending=PendingMetrics(step, config.skip_nonfinite),
        start_time=start_time,
        config_to_store=None if store_as is None else (store_as, config_text),
    )
    if run.is_chief:
        _describe_run(run, config_text)
        episode = first_episode(config.train_sampler, config.seed)
        if step == 0 and figures.is_image_episode(episode):
            run.writer.write_images(0, {"episode": figures.episode_grid(episode)[None]})
    return run


def _selection(config: TrainConfig, workdir, mesh) -> Selection | None:
    if config.validation is None:
        return None
    metric, mode = config.validation.selection(config.learner, config.evaluation.inner_steps)
    return Selection(
        _evaluator(config, mesh, config.validation.sampler, "val"),
        run_checkpoints.best_checkpoint_manager(workdir, metric, mode),
        metric,
    )


def finished_report(workdir: epath.Path, num_steps: int) -> dict[str, float] | None:
    """The report of the run in ``workdir`` if it finished at ``num_steps`` (its
    ``final_metrics.json`` is of that step and so is its latest checkpoint), else None.
    Raises a ValueError if the run's latest checkpoint is past ``num_steps``."""
    latest = run_checkpoints.latest_step(workdir)
    if latest is not None and latest > num_steps:
        raise ValueError(
            f"The run in {workdir} is at step {latest:,}, past train.num_steps = {num_steps:,}: "
            f"it cannot go back. Set train.num_steps to {latest:,} or more, or use a new "
            f"--workdir."
        )
    path = workdir / FINAL_METRICS
    if latest != num_steps or not path.exists():
        return None
    report = json.loads(path.read_text())
    return report if report.get("step") == num_steps else None


def _say_finished(report: dict[str, float], workdir, verbose: bool) -> None:
    message = (
        f"The run in {workdir} finished at step {int(report['step']):,}; its report, "
        f"{FINAL_METRICS}, is left as it is. Raise train.num_steps to train on, or evaluate "
        f"it again with launch.evaluate."
    )
    logging.info(message)
    if verbose and jax.process_index() == 0:
        print(f"metax: {message}", flush=True)


def _evaluator(config: TrainConfig, mesh, sampler: Sampler, split: str) -> Evaluator:
    return Evaluator(
        config.learner,
        sampler,
        mesh,
        config.seed,
        config.evaluation,
        config.eval_batch_size,
        split=split,
    )


def _resume(init, mesh, checkpoints, console: Console, num_steps: int) -> tuple[MetaState, int]:
    """The state to start from: the latest readable checkpoint's, else a new one."""
    restored, latest = run_checkpoints.restore_latest(checkpoints, abstract_state(init, mesh))
    if restored is None:
        state = init()
        return state, int(fetch(state.step))
    logging.info("Resumed from the checkpoint of step %d in %s.", latest, checkpoints.directory)
    console.say(f"resumed from the checkpoint of step {latest} (of {num_steps}).")
    return restored, int(fetch(restored.step))


def _step_call(config: TrainConfig, mesh, train_step, first_step: int) -> StepCall:
    """``step_call(state, n) -> (state, metrics, stacked)``: ``n`` meta-steps in one device
    call of ``train_step`` (`make_train_step`'s) or of `make_multi_step`'s; ``stacked`` is
    None when the metrics are one step's, else ``n`` (metrics with a leading step axis).
    Host-fed runs take one step per call."""
    learner, sampler = config.learner, config.train_sampler
    if isinstance(sampler, HostTaskSampler):
        feed = train_batches(
            sampler, config.seed, first_step, config.num_steps, config.meta_batch_size, mesh
        )
        return lambda state, n: (*train_step(state, next(feed)), None)
    if config.steps_per_call == 1:
        return lambda state, n: (*train_step(state), None)
    train_steps_fn = make_multi_step(
        learner, sampler, config.meta_batch_size, mesh, config.seed, config.steps_per_call
    )
    return lambda state, n: (*train_steps_fn(state, np.int32(n)), n)


def _describe_run(run: Run, config_text: str) -> None:
    """TensorBoard's record of what runs: the gin config as text, its bindings as hparams,
    and the meta-parameters' overview (names, shapes, sizes)."""
    from clu import parameter_overview

    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run.state.meta_params)
    overview = parameter_overview.get_parameter_overview(shapes, include_stats=False)
    count = parameter_overview.count_parameters(shapes)
    logging.info("Meta-parameters (%d):\n%s", count, overview)
    run.console.say(f"{count:,} meta-parameters in {len(jax.tree.leaves(shapes))} arrays.")
    texts = {"meta_parameters": f"{count:,} meta-parameters\n\n```\n{overview}\n```"}
    if config_text:
        texts["config"] = gin.markdown(config_text)
    run.writer.write_texts(run.step, texts)
    arguments = {
        "train.meta_batch_size": run.config.meta_batch_size,
        "train.num_steps": run.config.num_steps,
        "train.seed": run.config.seed,
    }
    run.writer.write_hparams({**arguments, **run_dir.hparams(config_text)})


# Phase 2: training, and the periodic work due after a device call.


class Periodic(NamedTuple):
    """Work done every ``every(config)`` meta-steps, after the device call that reaches it.

    ``at_last``: whether it is due at the last step (whatever the schedule). ``on_stop``:
    whether it is due when a signal stops the run (True or False whatever the schedule; None:
    as scheduled).
    """

    name: str
    every: Callable[[TrainConfig], int]
    action: Callable[["Run"], None]
    at_last: bool
    on_stop: bool | None


def is_due(periodic: Periodic, config: TrainConfig, step: int, stopping: bool) -> bool:
    """The one rule for periodic work: due at the last step if ``at_last``; when stopping as
    ``on_stop`` says; else every ``every`` steps."""
    if step == config.num_steps:
        return periodic.at_last
    if stopping and periodic.on_stop is not None:
        return periodic.on_stop
    return step % periodic.every(config) == 0


def log(run: Run) -> None:
    """Fetches and checks the interval's metrics; writes them with the speed."""
    run.train_metrics = run.pending.collect(run.checkpoints.latest_step())
    speed = run.console.interval_speed(run.step)
    rates = (
        {}
        if speed is None
        else {"steps_per_sec": speed, "tasks_per_sec": speed * run.config.meta_batch_size}
    )
    run.writer.write_scalars(run.step, {**run.train_metrics, **rates})
    run.console.logged(run.step, run.train_metrics, speed)


def evaluate(run: Run) -> None:
    """Periodic evaluation: on the validation tasks (offering the state to the best
    checkpoint) with validation, else on the meta-test tasks."""
    with run.console.paused():
        if run.selection is None:
            results, split = run.evaluator(run.state), "eval"
        else:
            results, split = validate(run, run.selection), "val"
    run.writer.write_scalars(run.step, results)
    run.console.evaluated(run.step, results, split)
    release_freed_memory()  # The evaluation programs' compiler heap.


def save(run: Run) -> None:
    """Checkpoints the state, never past a non-finite step (pending metrics are checked), with
    the interval's training metrics beside it (`TRAIN_METRICS`). The run's config is stored
    with its first checkpoint (a run that never checkpoints leaves no config behind)."""
    if run.pending:
        run.pending.collect(run.checkpoints.latest_step())
    run.checkpoints.save(run.step, args=ocp.args.StandardSave(run.state))
    if run.is_chief and run.train_metrics:
        record = {"step": run.step, "metrics": run.train_metrics}
        run_dir.write_atomically(run.workdir / TRAIN_METRICS, json.dumps(record, indent=2))
    if run.config_to_store is not None:
        run.checkpoints.wait_until_finished()  # The config follows a complete checkpoint.
        run_dir.store_config(run.workdir, *run.config_to_store)
        run.config_to_store = None


PERIODIC = (
    Periodic("log", lambda config: config.log_every, log, at_last=True, on_stop=None),
    # At the last step the final evaluation follows; a stopped run does not evaluate.
    Periodic("evaluate", lambda config: config.evaluation.every, evaluate, False, False),
    Periodic("checkpoint", lambda config: config.checkpoints.every, save, True, True),
)


def next_call_steps(run: Run) -> int:
    """Steps of the next device call: up to the next step where periodic work is due (or the
    last step), and one on a process's first call (it compiles: its time is the compile
    time)."""
    if run.console.compile_seconds is None:
        return 1
    config, step = run.config, run.step
    to_due = [periodic.every(config) - step % periodic.every(config) for periodic in PERIODIC]
    return min(config.steps_per_call, config.num_steps - step, *to_due)


def train_steps(run: Run, signals: StopSignals) -> None:
    """Runs meta-steps up to ``num_steps``, doing the periodic work due after each device
    call; a stop signal saves the current step and returns."""
    logging.info(
        "Training from step %d to %d on %d devices.", run.step, run.config.num_steps, run.mesh.size
    )
    if run.step < run.config.num_steps:
        run.console.start(run.step)
    while run.step < run.config.num_steps:
        n = next_call_steps(run)
        run.state, metrics, stacked = run.step_call(run.state, n)
        run.step += n
        if run.console.compile_seconds is None:
            jax.block_until_ready(metrics)
            run.console.compiled(run.step)
            release_freed_memory()  # The compiler's heap.
        else:
            run.console.advance(n)
        run.pending.add(metrics, stacked)
        stopping = signals.should_stop(run.checkpoints)
        for periodic in PERIODIC:
            if is_due(periodic, run.config, run.step, stopping):
                periodic.action(run)
        if stopping:
            break
    run.console.training_done()
    run.checkpoints.wait_until_finished()


def stopped(run: Run, signal_name: str, phase: str = "training") -> dict[str, float]:
    """The report of a run stopped by a signal, once its current step is saved."""
    if phase == "training":
        message = (
            f"Received {signal_name} at step {run.step}: saved the checkpoint of step "
            f"{run.step} in {run.workdir}; exiting. Run the same command to resume."
        )
    else:
        message = (
            f"Received {signal_name} during {phase}: the checkpoint of step {run.step} in "
            f"{run.workdir} is saved; exiting. Run the same command to finish the evaluation."
        )
    logging.warning(message)
    run.console.say(message)
    return {"step": float(run.step), "stopped_by_signal": 1.0}


def stopped_in_start_up(stop: Stopped, workdir: str) -> dict[str, float]:
    """The report of a run stopped by a signal before its first meta-step: nothing new to
    save."""
    message = (
        f"Received {stop.signal_name} during {stop.phase}, before any meta-step: nothing to save "
        f"in {workdir}; exiting. Run the same command to start (or resume) the run."
    )
    logging.warning(message)
    if jax.process_index() == 0:
        print(f"metax: {message}", flush=True)
    return {"stopped_by_signal": 1.0}


# Phase 3: final evaluation.


def final_evaluation(run: Run, signals: StopSignals) -> dict[str, float]:
    """The meta-test evaluation of the last state or, with validation, of the best
    checkpoint (validated once more at the last step), and the figure of held-out tasks.
    Raises `Stopped` (between evaluation calls) if a stop signal arrives: the last checkpoint
    exists, and the same command runs this phase again."""

    def check() -> None:
        signals.check("the final evaluation")

    final = {"step": float(run.step), **(run.train_metrics or _stored_train_metrics(run))}
    state = run.state
    if run.selection is not None:
        final.update(validate(run, run.selection, check))
        state, best_step = restore_best(run, run.selection)
        final["best/step"] = float(best_step)
    run.console.say(f"final evaluation on {run.evaluator.num_tasks} meta-test tasks ...")
    final.update(run.evaluator(state, check))
    check()
    shown = {k: v for k, v in final.items() if k.startswith(("eval/", "val/", "best/"))}
    run.writer.write_scalars(run.step, shown)
    write_final_figure(run, state)
    return final


def _stored_train_metrics(run: Run) -> dict[str, float]:
    """The training metrics saved with the checkpoint of this step (a run resumed at its last
    step has logged nothing)."""
    path = run.workdir / TRAIN_METRICS
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    return record["metrics"] if record.get("step") == run.step else {}


def validate(run: Run, selection: Selection, check=None) -> dict[str, float]:
    """Evaluates on the validation tasks and offers the state to the best checkpoint (orbax
    keeps it if its metric is the best so far); a non-finite metric is never offered.
    ``check()`` is called between evaluation calls (see `Evaluator`)."""
    results = selection.evaluator(run.state, check)
    if selection.metric not in results:
        names = sorted(k for k in results if not k.endswith(("_ci95", "num_tasks")))
        raise ValueError(
            f"Validation.metric {selection.metric!r} is not a validation metric of this "
            f"learner; it has {names}."
        )
    value, best = results[selection.metric], selection.best
    if np.isfinite(value) and run.step not in best.all_steps():
        # The two managers' saves never overlap: with several processes orbax synchronizes
        # each save under barrier names that both managers share, so a save of one while
        # the other's is still finishing in the background fails ("Barrier ... is already
        # ongoing"). Validation is rare: its save waits; the periodic ones stay asynchronous.
        run.checkpoints.wait_until_finished()
        best.save(
            run.step, args=ocp.args.StandardSave(run.state), metrics={selection.metric: value}
        )
        best.wait_until_finished()
    return results


def restore_best(run: Run, selection: Selection) -> tuple[MetaState, int]:
    """The best checkpoint by the validation metric, and its step."""
    selection.best.wait_until_finished()
    best_step = selection.best.best_step()
    if best_step is None:
        raise FloatingPointError(
            f"No finite {selection.metric} in any validation of this run: no best checkpoint "
            f"to evaluate. Lower the learning rates."
        )
    logging.info("Evaluating the best checkpoint by %s: step %d.", selection.metric, best_step)
    abstract = abstract_state(run.init, run.mesh)
    return selection.best.restore(best_step, args=ocp.args.StandardRestore(abstract)), best_step


def write_final_figure(run: Run, state: MetaState) -> None:
    """What adaptation does, for a person, to TensorBoard and the workdir: for regression
    tasks with a ground truth, a few held-out tasks before and after adaptation
    (``regression_tasks.png``); for image classification, the first held-out episode with
    each query marked right or wrong after adaptation (``held_out_episode.png``)."""
    config, learner, sampler = run.config, run.config.learner, run.config.eval_sampler
    inner_steps = max(config.evaluation.inner_steps)
    key = jax.random.fold_in(jax.random.key(config.seed), FIGURE)
    title = f"held-out tasks after {run.step} meta-steps, {inner_steps} inner steps"
    if figures.has_regression_curves(learner, sampler):
        run.console.say("drawing held-out tasks before and after adaptation ...")
        curves = figures.regression_curves(learner, state, sampler, key, inner_steps)
        image = figures.regression_figure(figures.RegressionCurves(*fetch(tuple(curves))), title)
        name, tag = REGRESSION_FIGURE, "regression_tasks"
    else:
        episode = first_episode(sampler, config.seed, EVAL_DATA)
        if not figures.can_draw_adapted_episode(learner, episode):
            return
        run.console.say("drawing a held-out episode after adaptation ...")
        predictions = fetch(
            figures.adapted_query_predictions(learner, state, episode, key, inner_steps)
        )
        image = figures.episode_grid(episode, predictions)
        name, tag = EPISODE_FIGURE, "held_out_episode"
    run.writer.write_images(run.step, {tag: image[None]})
    if run.is_chief:
        figures.save_png(image, run.workdir / name)


# Phase 4: finished.


def finish(run: Run, final: dict[str, float]) -> dict[str, float]:
    """Writes ``final_metrics.json`` (process 0) and prints the summary."""
    final["wall_time_s"] = time.time() - run.start_time
    if run.is_chief:
        text = json.dumps(final, indent=2, sort_keys=True)
        run_dir.write_atomically(run.workdir / FINAL_METRICS, text)
    logging.info("Final metrics: %s", json.dumps(final, sort_keys=True))
    outputs = ["TensorBoard events", "checkpoints/", FINAL_METRICS, run_dir.CONFIG]
    outputs += [name for name in FIGURES if (run.workdir / name).exists()]
    run.console.summary(final, run.workdir, outputs)
    return final


def interval_metrics(fetched: list[dict], first_step: int, skip_nonfinite: bool, where: str):
    """The mean ``train/*`` metrics of consecutive steps ``first_step + 1, ...`` and
    ``train/skipped_steps``; raises a FloatingPointError at the first non-finite step unless
    ``skip_nonfinite``."""
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


def _unstack(metrics: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """The first ``n`` steps' metrics of a multi-step call, one dict per step."""
    return [{name: values[i] for name, values in metrics.items()} for i in range(n)]
