"""The training loop: the one gin-configurable root of an experiment (``train`` in gin files).

Everything a run needs is derived from its arguments and ``seed``: task batches are sampled on
device inside the compiled step from ``fold_in(key, step)`` (or, host-fed, from a generator
seeded with the seed, step and task), so a resumed run replays the same batches. The loop
writes to ``workdir``:

* ``config.gin``: the operative gin config (process 0; never overwritten on resume),
* TensorBoard event files (training metrics every ``log_every`` steps, averaged over those
  steps; evaluation every ``eval_every`` steps; steps/s; for image tasks, a grid of the first
  training episode at step 0), through `metax.train.writers`,
* ``checkpoints/<step>/``: orbax checkpoints of the `MetaState` (the state is the checkpoint),
* ``final_metrics.json``: flat metric name -> number, with 95% confidence half-widths.
* ``regression_tasks.png`` (regression tasks): a few held-out tasks at the end, ground truth,
  support points and predictions before and after adaptation (also in TensorBoard).

Running again with the same workdir resumes from the latest checkpoint.
"""

import json
import time
from collections.abc import Sequence

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

import metax.train.configurables  # noqa: F401  (gin registrations used by experiment files)
from metax import checks
from metax.data.base import TaskSampler
from metax.data.host import HostTaskSampler
from metax.learner.base import Learner, evaluation_settings
from metax.train import figures, sharding
from metax.train import workdir as run_dir
from metax.train.console import Console
from metax.train.evaluation import Evaluator
from metax.train.host_memory import release_freed_memory
from metax.train.signals import StopSignals
from metax.train.step import (
    EVAL_DATA,
    FIGURE,
    NONFINITE,
    abstract_state,
    fetch,
    first_episode,
    is_host_fed,
    make_multi_step,
    make_train_step,
    train_batches,
)

REGRESSION_FIGURE = "regression_tasks.png"
EPISODE_FIGURE = "held_out_episode.png"
FIGURES = (REGRESSION_FIGURE, EPISODE_FIGURE)


def _check_positive(**numbers: int) -> None:
    for name, value in numbers.items():
        if value < 1:
            raise ValueError(f"train.{name} must be a positive integer, got {value}.")


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


@gin.configurable("train", module="metax.train")
def train(
    *,
    learner: Learner,
    train_sampler: TaskSampler | HostTaskSampler,
    workdir: str,
    eval_sampler: TaskSampler | HostTaskSampler | None = None,
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
    val_sampler: TaskSampler | HostTaskSampler | None = None,
    select_metric: str | None = None,
    verbose: bool = True,
    steps_per_call: int = 1,
) -> dict[str, float]:
    """Meta-trains ``learner`` on tasks from ``train_sampler`` and evaluates on held-out tasks.

    Args:
      learner: e.g. ``metax.learner.maml(...)``.
      train_sampler: draws meta-training tasks; ``eval_sampler`` (default: the same family)
        draws the held-out evaluation tasks from a separate key stream. Either sampler kind:
        on device (`metax.data.TaskSampler`, drawn inside the compiled step) or host-fed
        (`metax.data.host.HostTaskSampler`, built ahead on the host, each process its share).
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
      val_sampler: draws meta-validation tasks (classes disjoint from both other sets). With
        it, periodic evaluation (every ``eval_every`` steps and at the end) runs on
        validation tasks only, the checkpoint with the best ``select_metric`` is kept in
        ``workdir/best_checkpoint`` (orbax's best-checkpoint support; survives resumes), and
        the final meta-test evaluation is of that checkpoint (``best/step`` says which).
        Without it, periodic evaluation runs on the meta-test tasks and the final one on the
        last step (selecting a step by those numbers would select on the test set).
      select_metric: the validation metric to select by, e.g. ``"val/steps_5/accuracy"``
        (maximized; any other name is minimized). Default: the loss of the learner's last
        evaluation setting (``val/steps_<max eval_inner_steps>/loss``).
      steps_per_call: meta-steps per device call for on-device samplers: above 1, a
        ``lax.fori_loop`` over the same step (`make_multi_step`), so the host is visited once
        per call, for devices where dispatch latency is not hidden. Calls end at every log,
        evaluation and checkpoint step, so those (and signal handling, and the divergence
        guard) happen at the same steps as ever, and results are bitwise those of one step
        per call (tests/test_multi_step.py). On CPU one step per call is as fast or faster
        (README, Performance). Host-fed samplers take one step per call.
      verbose: process 0 prints progress to stdout (`metax.train.console`: a progress bar
        on a terminal, a line every ``log_every`` steps otherwise) and a summary at the end.

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
        steps_per_call=steps_per_call,
    )
    if not eval_inner_steps or min(eval_inner_steps) < 0:
        raise ValueError(
            f"train.eval_inner_steps must be a non-empty tuple of step counts >= 0, "
            f"got {eval_inner_steps}."
        )
    select_metric, select_mode = selection_metric(
        learner, eval_inner_steps, val_sampler, select_metric
    )
    mesh = sharding.task_mesh()
    sharding.check_divisible(meta_batch_size, mesh)
    sharding.check_divisible(eval_batch_size, mesh, what="evaluation batch (train.eval_batch_size)")
    workdir = run_dir.resolve(workdir)
    run_dir.check_writable(workdir)
    episode = first_episode(train_sampler, seed)
    if learner.meta_model is not None:
        checks.check_model_fits_data(learner.meta_model, episode)
    config = gin.operative_config_str()
    run_dir.check_and_store_config(workdir, config, allow_config_change)
    train_arguments = {
        "train.meta_batch_size": meta_batch_size,
        "train.num_steps": num_steps,
        "train.seed": seed,
    }

    from metax.train import writers  # Imports TensorBoard's protos: only when training.

    is_chief = jax.process_index() == 0
    start_time = time.time()
    init, train_step = make_train_step(learner, train_sampler, meta_batch_size, mesh, seed)
    evaluator = Evaluator(
        learner,
        eval_sampler or train_sampler,
        mesh,
        seed,
        eval_num_tasks,
        eval_batch_size,
        eval_inner_steps,
    )
    validator = best = None
    if val_sampler is not None:
        validator = Evaluator(
            learner,
            val_sampler,
            mesh,
            seed,
            eval_num_tasks,
            eval_batch_size,
            eval_inner_steps,
            split="val",
        )
        best = run_dir.best_checkpoint_manager(workdir, select_metric, select_mode)
    console = Console(
        enabled=is_chief and verbose, num_steps=num_steps, meta_batch_size=meta_batch_size
    )
    checkpoints = run_dir.checkpoint_manager(workdir, max_checkpoints_to_keep)
    restored, latest = run_dir.restore_latest(checkpoints, abstract_state(init, mesh))
    if restored is None:
        state = init()
    else:
        state = restored
        logging.info("Resumed from the checkpoint of step %d in %s.", latest, workdir)
        console.say(f"resumed from the checkpoint of step {latest} (of {num_steps}).")

    writer = writers.create_writer(workdir, is_chief)
    step = int(fetch(state.step))
    if is_chief:
        _describe_run(writer, step, state, config, train_arguments, console)
    if step == 0 and is_chief and figures.is_image_episode(episode):
        writer.write_images(0, {"episode": figures.episode_grid(episode)[None]})
    history, train_metrics = [], {}
    checked_step = step  # Steps up to here are known to be finite.

    def check_history():
        """Fetches the pending steps' metrics; raises at a non-finite step (see above)."""
        nonlocal history, checked_step
        # An entry is (metrics, None) for one step, (metrics stacked, n) for n steps.
        metrics_of_calls = fetch([metrics for metrics, _ in history])
        fetched = [
            step_metrics
            for metrics, (_, n) in zip(metrics_of_calls, history, strict=True)
            for step_metrics in ([metrics] if n is None else _unstack(metrics, n))
        ]
        latest = checkpoints.latest_step()
        where = (
            "no checkpoint had been written yet"
            if latest is None
            else f"the last checkpoint, of step {latest}, is intact"
        )
        metrics = _interval_metrics(fetched, checked_step, skip_nonfinite, where)
        checked_step += len(fetched)
        history = []
        return metrics

    logging.info("Training from step %d to %d on %d devices.", step, num_steps, mesh.size)
    if is_host_fed(train_sampler):
        # A host-fed batch enters per step: one step per call; metrics without a step axis.
        feed = train_batches(train_sampler, seed, step, num_steps, meta_batch_size, mesh)
        steps_per_call = 1

        def run_steps(state, n):
            return (*train_step(state, next(feed)), None)
    elif steps_per_call == 1:

        def run_steps(state, n):
            return (*train_step(state), None)
    else:
        train_steps = make_multi_step(
            learner, train_sampler, meta_batch_size, mesh, seed, steps_per_call
        )

        def run_steps(state, n):
            return (*train_steps(state, np.int32(n)), n)

    def next_call_steps(step: int) -> int:
        """Steps of the next call: up to the next log, eval, checkpoint or last step, and
        one on a process's first call (it compiles: its time is the compile time)."""
        if console.compile_seconds is None:
            return 1
        stops = [(step // every + 1) * every for every in (log_every, eval_every, checkpoint_every)]
        return min(steps_per_call, num_steps - step, *(stop - step for stop in stops))

    try:
        with StopSignals() as signals:
            if step < num_steps:
                console.start(step)
            while step < num_steps:
                n = next_call_steps(step)
                state, metrics, stacked = run_steps(state, n)
                step += n
                if console.compile_seconds is None:
                    jax.block_until_ready(metrics)
                    console.compiled(step)
                    release_freed_memory()
                else:
                    console.advance(n)
                if history:
                    # At most two calls in flight: wait (no copy) for the previous one.
                    # Unbounded queues of multi-device executions deadlock XLA:CPU's
                    # in-process all-reduce (seen with 8 virtual devices on 2 cores); on
                    # accelerators one queued call keeps the device busy all the same.
                    jax.block_until_ready(history[-1][0])
                history.append((metrics, stacked))
                stop = signals.should_stop(checkpoints)
                if step % log_every == 0 or step == num_steps:
                    # The only device-to-host copy of the loop: the interval's metrics.
                    train_metrics = check_history()
                    speed = console.interval_speed(step)
                    rates = (
                        {}
                        if speed is None
                        else {"steps_per_sec": speed, "tasks_per_sec": speed * meta_batch_size}
                    )
                    writer.write_scalars(step, {**train_metrics, **rates})
                    console.logged(step, train_metrics, speed)
                if step % eval_every == 0 and step < num_steps and not stop:
                    with console.paused():
                        if validator is None:
                            results, split = evaluator(state), "eval"
                        else:
                            results = _validate(validator, best, select_metric, state, step)
                            split = "val"
                    writer.write_scalars(step, results)
                    console.evaluated(step, results, split)
                    release_freed_memory()  # The evaluation programs' compiler heap.
                if step % checkpoint_every == 0 or step == num_steps or stop:
                    if history:
                        check_history()  # Never checkpoint past a non-finite step.
                    checkpoints.save(step, args=ocp.args.StandardSave(state))
                if stop:
                    break
        console.training_done()
        checkpoints.wait_until_finished()
        if signals.received is not None:
            logging.warning(
                "Received %s at step %d: saved the checkpoint of step %d in %s; exiting. "
                "Run the same command to resume.",
                signals.received,
                step,
                step,
                workdir,
            )
            return {"step": float(step), "stopped_by_signal": 1.0}
        final = {"step": float(step), **train_metrics}
        if validator is not None:
            final.update(_validate(validator, best, select_metric, state, step))
            best.wait_until_finished()
            best_step = best.best_step()
            if best_step is None:
                raise FloatingPointError(
                    f"No finite {select_metric} in any validation of this run: no best "
                    f"checkpoint to evaluate. Lower the learning rates."
                )
            state = best.restore(
                best_step, args=ocp.args.StandardRestore(abstract_state(init, mesh))
            )
            final["best/step"] = float(best_step)
            logging.info("Evaluating the best checkpoint by %s: step %d.", select_metric, best_step)
        console.say(f"final evaluation on {evaluator.num_tasks} meta-test tasks ...")
        final.update(evaluator(state))
        writer.write_scalars(
            step, {k: v for k, v in final.items() if k.startswith(("eval/", "val/", "best/"))}
        )
        _write_final_figure(
            learner,
            state,
            eval_sampler or train_sampler,
            seed,
            step,
            max(eval_inner_steps),
            writer,
            workdir,
            is_chief,
            console,
        )
    finally:
        # One shutdown for every exit (end, signal, error): pending saves finish, files close.
        checkpoints.close()
        if best is not None:
            best.close()
        writer.flush()
        writer.close()
    final["wall_time_s"] = time.time() - start_time
    if is_chief:
        (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2, sort_keys=True))
    logging.info("Final metrics: %s", json.dumps(final, sort_keys=True))
    outputs = ["TensorBoard events", "checkpoints/", "final_metrics.json", "config.gin"]
    outputs += [name for name in FIGURES if (workdir / name).exists()]
    console.summary(final, workdir, outputs)
    return final


def _describe_run(
    writer, step: int, state, config: str, train_arguments: dict, console: Console
) -> None:
    """TensorBoard's record of what runs: the gin config as text, its bindings as hparams,
    and the meta-parameters' overview (names, shapes, sizes)."""
    from clu import parameter_overview

    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.meta_params)
    overview = parameter_overview.get_parameter_overview(shapes, include_stats=False)
    count = parameter_overview.count_parameters(shapes)
    logging.info("Meta-parameters (%d):\n%s", count, overview)
    console.say(f"{count:,} meta-parameters in {len(jax.tree.leaves(shapes))} arrays.")
    texts = {"meta_parameters": f"{count:,} meta-parameters\n\n```\n{overview}\n```"}
    if config:
        texts["config"] = gin.markdown(config)
    writer.write_texts(step, texts)
    writer.write_hparams({**train_arguments, **run_dir.hparams(config)})


def _unstack(metrics: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """The first ``n`` steps' metrics of a multi-step call, one dict per step."""
    return [{name: values[i] for name, values in metrics.items()} for i in range(n)]


def selection_metric(learner, eval_inner_steps, val_sampler, select_metric):
    """``(metric, mode)`` the best checkpoint is selected by (see `train`)."""
    names = list(evaluation_settings(learner, eval_inner_steps))
    if select_metric is None:
        select_metric = f"val/{names[-1]}/loss"
    parts = select_metric.split("/")
    if val_sampler is not None and (len(parts) != 3 or parts[0] != "val" or parts[1] not in names):
        raise ValueError(
            f"train.select_metric must be 'val/<setting>/<metric>' with a setting of this "
            f"learner ({', '.join(names)}), e.g. 'val/{names[-1]}/accuracy'; got "
            f"{select_metric!r}."
        )
    return select_metric, "max" if parts[-1] == "accuracy" else "min"


def _validate(validator, best, select_metric: str, state, step: int) -> dict[str, float]:
    """Evaluates on the validation tasks and offers the state to the best checkpoint (orbax
    keeps it if its metric is the best so far); a non-finite metric is never offered."""
    results = validator(state)
    if select_metric not in results:
        names = sorted(k for k in results if not k.endswith(("_ci95", "num_tasks")))
        raise ValueError(
            f"train.select_metric {select_metric!r} is not a validation metric of this "
            f"learner; it has {names}."
        )
    value = results[select_metric]
    if np.isfinite(value) and step not in best.all_steps():
        best.save(step, args=ocp.args.StandardSave(state), metrics={select_metric: value})
    return results


def _write_final_figure(
    learner, state, sampler, seed, step, inner_steps, writer, workdir, is_chief, console
):
    """What adaptation does, for a person, to TensorBoard and the workdir: for regression
    tasks with a ground truth, a few held-out tasks before and after adaptation
    (``regression_tasks.png``); for image classification, the first held-out episode with
    each query marked right or wrong after adaptation (``held_out_episode.png``)."""
    key = jax.random.fold_in(jax.random.key(seed), FIGURE)
    title = f"held-out tasks after {step} meta-steps, {inner_steps} inner steps"
    if figures.has_regression_curves(learner, sampler):
        console.say("drawing held-out tasks before and after adaptation ...")
        curves = figures.regression_curves(learner, state, sampler, key, inner_steps)
        image = figures.regression_figure(figures.RegressionCurves(*fetch(tuple(curves))), title)
        name, tag = REGRESSION_FIGURE, "regression_tasks"
    else:
        episode = first_episode(sampler, seed, EVAL_DATA)
        if not figures.can_draw_adapted_episode(learner, episode):
            return
        console.say("drawing a held-out episode after adaptation ...")
        predictions = fetch(
            figures.adapted_query_predictions(learner, state, episode, key, inner_steps)
        )
        image = figures.episode_grid(episode, predictions)
        name, tag = EPISODE_FIGURE, "held_out_episode"
    writer.write_images(step, {tag: image[None]})
    if is_chief:
        figures.save_png(image, workdir / name)
