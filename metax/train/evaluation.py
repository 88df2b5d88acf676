"""Evaluation on held-out tasks: per-task metrics, means and 95% confidence intervals, and
the evaluation of a stored run's checkpoint."""

import inspect
import json

import gin
import jax
import numpy as np

from metax.data import host
from metax.data.base import TaskSampler, sample_meta_batch
from metax.learner.base import Learner, MetaState, evaluation_settings
from metax.train import sharding
from metax.train import workdir as run_dir
from metax.train.step import (
    EVAL_DATA,
    EVAL_STEP,
    VAL_DATA,
    VAL_STEP,
    abstract_state,
    fetch,
    is_host_fed,
    make_train_step,
)

CI95_Z = 1.959963984540054


def mean_and_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(CI95_Z * values.std(ddof=1) / np.sqrt(values.size))


class Evaluator:
    """Evaluates on a fixed set of held-out tasks, in chunks, compiled once per evaluation
    setting (`metax.learner.base.evaluation_settings`: for learners with an inner loop, each
    of ``inner_steps``). ``evaluator(state)`` returns ``{"<split>/<setting>/<metric>": mean,
    "<split>/<setting>/<metric>_ci95": half-width, "<split>/num_tasks": n}``; ``split`` is
    "eval" (meta-test tasks) or "val" (meta-validation tasks, their own key streams)."""

    def __init__(
        self,
        learner: Learner,
        sampler: TaskSampler | host.HostTaskSampler,
        mesh,
        seed: int,
        num_tasks: int,
        batch_size: int,
        inner_steps,
        split: str = "eval",
    ):
        self.num_chunks = -(-num_tasks // batch_size)
        self.num_tasks = self.num_chunks * batch_size
        self.settings = evaluation_settings(learner, inner_steps)
        self.split = split
        data_tag, step_tag = (VAL_DATA, VAL_STEP) if split == "val" else (EVAL_DATA, EVAL_STEP)
        data_key = jax.random.fold_in(jax.random.key(seed), data_tag)
        step_key = jax.random.fold_in(jax.random.key(seed), step_tag)
        tasks = sharding.task_sharded(mesh)
        self._host_fed = is_host_fed(sampler)
        self._batches = lambda: host.meta_batches(
            sampler, seed, data_tag, 0, self.num_chunks, batch_size, mesh
        )

        def evaluate_chunk(state, chunk, setting, batch=None):
            if batch is None:
                batch = sample_meta_batch(sampler, data_key, batch_size, chunk * batch_size)
                batch = jax.lax.with_sharding_constraint(batch, tasks)
            else:
                batch = host.scale_images(batch)
            return learner.evaluate(state, batch, jax.random.fold_in(step_key, chunk), setting)

        self._evaluate_chunk = jax.jit(
            evaluate_chunk, static_argnums=2, out_shardings=sharding.replicated(mesh)
        )

    def _chunks(self, state: MetaState, setting) -> list:
        if not self._host_fed:
            return [fetch(self._evaluate_chunk(state, c, setting)) for c in range(self.num_chunks)]
        # Host-fed tasks: chunk c holds "step" c of the stream (`metax.data.host`).
        return [
            fetch(self._evaluate_chunk(state, c, setting, batch))
            for c, batch in enumerate(self._batches())
        ]

    def __call__(self, state: MetaState) -> dict[str, float]:
        results = {f"{self.split}/num_tasks": float(self.num_tasks)}
        for label, setting in self.settings.items():
            # Fetched chunk by chunk: a long queue of multi-device executions can deadlock
            # XLA:CPU's collectives (see the training loop), and evaluation is not hot.
            chunks = self._chunks(state, setting)
            per_task = jax.tree.map(lambda *a: np.concatenate(a), *chunks)
            for name, values in per_task.items():
                mean, ci95 = mean_and_ci95(values)
                results[f"{self.split}/{label}/{name}"] = mean
                results[f"{self.split}/{label}/{name}_ci95"] = ci95
        return results


def evaluate_run(
    workdir: str, num_tasks: int | None = None, step: int | None = None, checkpoint: str = "latest"
) -> dict:
    """Evaluates a run's checkpoint on its held-out tasks, with the run's settings.

    ``checkpoint``: ``"latest"`` (or exactly ``step``) of ``workdir/checkpoints``, or ``"best"``,
    the run's best checkpoint by its validation metric (runs with ``train.val_sampler``).

    The run's `train` arguments (learner, samplers, seed, evaluation settings) come from the
    parsed gin config, i.e. the config stored in ``workdir`` (see ``launch/evaluate.py``). Reads
    only complete checkpoints, so it is safe on a run that is still going. Returns ``{"step",
    "eval/...", ...}`` (means and 95% half-widths; the same tasks and numbers as the run's own
    final evaluation) and writes them to ``workdir/eval_step_<step>.json`` (process 0).
    """
    from metax.train.loop import train as train_fn  # The gin root whose bindings are read.

    arguments = {
        name: parameter.default
        for name, parameter in inspect.signature(train_fn).parameters.items()
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
    if checkpoint not in ("latest", "best"):
        raise ValueError(f"checkpoint must be 'latest' or 'best', got {checkpoint!r}.")
    workdir = run_dir.resolve(workdir)
    if checkpoint == "best":
        if arguments["val_sampler"] is None:
            raise ValueError(
                f"The run in {workdir} has no validation tasks (train.val_sampler), so no best "
                f"checkpoint; evaluate the latest one."
            )
        from metax.train.loop import selection_metric

        metric, mode = selection_metric(
            learner,
            arguments["eval_inner_steps"],
            arguments["val_sampler"],
            arguments["select_metric"],
        )
        manager = run_dir.best_checkpoint_manager(workdir, metric, mode)
        step = manager.best_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No best checkpoint in {workdir} yet.")
    else:
        manager = run_dir.checkpoint_manager(workdir)
    state, step = run_dir.restore_latest(
        manager, abstract_state(init, mesh), set_aside=False, step=step
    )
    manager.close()
    if state is None:
        raise FileNotFoundError(f"No complete checkpoint in {workdir}: nothing to evaluate yet.")
    evaluator = Evaluator(
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
        name = f"eval_best_step_{step}.json" if checkpoint == "best" else f"eval_step_{step}.json"
        (workdir / name).write_text(results_json)
    return results
