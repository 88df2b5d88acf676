"""Evaluation on held-out tasks: its settings (`Evaluation`, `Validation` and the metric a
best checkpoint is selected by), per-task metrics with means and 95% confidence intervals."""

import dataclasses
import functools
from collections.abc import Callable, Iterator

import gin
import jax
import numpy as np

from metax.data import host
from metax.data.base import MetaBatch, TaskSampler, sample_meta_batch
from metax.learner.base import Learner, MetaState, evaluation_settings
from metax.train import sharding
from metax.train.step import EVAL_DATA, EVAL_STEP, VAL_DATA, VAL_STEP, fetch
from metax.validate import check_instance, check_int, check_int_tuple, check_optional_int

CI95_Z = 1.959963984540054
SAMPLERS = (TaskSampler, host.HostTaskSampler)
SAMPLER_KINDS = (
    "a task sampler (e.g. metax.data.sinusoid() or metax.data.omniglot(); in gin "
    "@metax.data.sinusoid())"
)


def mean_and_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(CI95_Z * values.std(ddof=1) / np.sqrt(values.size))


@gin.configurable(module="metax.train")
@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a run evaluates on held-out tasks (`metax.train.TrainConfig.evaluation`).

    Attributes:
      sampler: draws the held-out (meta-test) tasks; None: the training sampler, from a key
        stream of its own.
      every: a periodic evaluation every this many meta-steps (the final one is always run).
      inner_steps: evaluate after each of these numbers of inner steps (learners without an
        inner loop evaluate once, whatever is given).
      num_tasks: held-out tasks per evaluation (rounded up to whole batches).
      batch_size: tasks per evaluation call; None: the run's meta-batch size.
    """

    sampler: TaskSampler | host.HostTaskSampler | None = None
    every: int = 1000
    inner_steps: tuple[int, ...] = (1, 5, 10)
    num_tasks: int = 600
    batch_size: int | None = None

    def __post_init__(self):
        if self.sampler is not None:
            check_instance("Evaluation.sampler", self.sampler, SAMPLERS, SAMPLER_KINDS)
        check_int("Evaluation.every", self.every)
        steps = check_int_tuple("Evaluation.inner_steps", self.inner_steps)
        object.__setattr__(self, "inner_steps", steps)
        check_int("Evaluation.num_tasks", self.num_tasks)
        check_optional_int("Evaluation.batch_size", self.batch_size)


@gin.configurable(module="metax.train")
@dataclasses.dataclass(frozen=True)
class Validation:
    """Model selection on meta-validation tasks (`metax.train.TrainConfig.validation`).

    With it, periodic evaluation (every ``Evaluation.every`` steps, with its inner steps and
    number of tasks) runs on validation tasks only, the checkpoint with the best ``metric`` is
    kept in ``workdir/best_checkpoint``, and the final meta-test evaluation is of that
    checkpoint. Without it, periodic evaluation runs on the meta-test tasks and the final one
    on the last step (selecting a step by those numbers would select on the test set).

    Attributes:
      sampler: draws meta-validation tasks (classes disjoint from the other two sets).
      metric: the validation metric to select by, ``"val/<setting>/<metric>"``, e.g.
        ``"val/steps_5/accuracy"`` (maximized; any other metric is minimized). None: the loss
        of the learner's last evaluation setting.
    """

    sampler: TaskSampler | host.HostTaskSampler
    metric: str | None = None

    def __post_init__(self):
        check_instance("Validation.sampler", self.sampler, SAMPLERS, SAMPLER_KINDS)
        if self.metric is not None and not isinstance(self.metric, str):
            raise ValueError(
                f"Validation.metric must be a string such as 'val/steps_5/accuracy', got "
                f"{self.metric!r}."
            )

    def selection(self, learner: Learner, inner_steps) -> tuple[str, str]:
        """``(metric, mode)`` the best checkpoint is selected by: the metric's name and
        ``"max"`` (accuracy) or ``"min"``. Raises a ValueError naming the learner's settings
        unless the metric is ``val/<one of them>/<metric>``."""
        names = list(evaluation_settings(learner, inner_steps))
        metric = self.metric or f"val/{names[-1]}/loss"
        parts = metric.split("/")
        if len(parts) != 3 or parts[0] != "val" or parts[1] not in names:
            raise ValueError(
                f"Validation.metric must be 'val/<setting>/<metric>' with a setting of this "
                f"learner ({', '.join(names)}), e.g. 'val/{names[-1]}/accuracy'; got "
                f"{metric!r}."
            )
        return metric, "max" if parts[-1] == "accuracy" else "min"


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
        evaluation: Evaluation,
        batch_size: int,
        split: str = "eval",
    ):
        """``evaluation`` gives the number of tasks and inner steps (not the sampler: that is
        ``sampler``); ``batch_size`` tasks run per call."""
        sharding.check_divisible(batch_size, mesh, what="evaluation batch (Evaluation.batch_size)")
        self.num_chunks = -(-evaluation.num_tasks // batch_size)
        self.num_tasks = self.num_chunks * batch_size
        self.settings = evaluation_settings(learner, evaluation.inner_steps)
        self.split = split
        data_tag, step_tag = (VAL_DATA, VAL_STEP) if split == "val" else (EVAL_DATA, EVAL_STEP)
        data_key = jax.random.fold_in(jax.random.key(seed), data_tag)
        step_key = jax.random.fold_in(jax.random.key(seed), step_tag)
        tasks = sharding.task_sharded(mesh)
        self._batches: Callable[[], Iterator[MetaBatch]] | None = None
        if isinstance(sampler, host.HostTaskSampler):
            # Chunk c holds "step" c of the stream (`metax.data.host`).
            self._batches = functools.partial(
                host.meta_batches, sampler, seed, data_tag, 0, self.num_chunks, batch_size, mesh
            )
            device_sampler = None
        else:
            device_sampler = sampler

        def evaluate_chunk(state, chunk, setting, batch=None):
            if device_sampler is not None:
                start = chunk * batch_size
                batch = sample_meta_batch(device_sampler, data_key, batch_size, start)
                batch = jax.lax.with_sharding_constraint(batch, tasks)
            else:
                batch = host.scale_images(batch)
            return learner.evaluate(state, batch, jax.random.fold_in(step_key, chunk), setting)

        self._evaluate_chunk = jax.jit(
            evaluate_chunk, static_argnums=2, out_shardings=sharding.replicated(mesh)
        )

    def _chunks(self, state: MetaState, setting, check) -> list:
        batches = self._batches() if self._batches is not None else [None] * self.num_chunks
        chunks = []
        for c, batch in enumerate(batches):
            chunks.append(fetch(self._evaluate_chunk(state, c, setting, batch)))
            if check is not None:
                check()
        return chunks

    def __call__(self, state: MetaState, check: Callable[[], None] | None = None):
        """The metrics of ``state`` (see the class docstring); ``check()``, if given, is
        called after each evaluation call (a stop signal raises there)."""
        results = {f"{self.split}/num_tasks": float(self.num_tasks)}
        for label, setting in self.settings.items():
            # Fetched chunk by chunk: a long queue of multi-device executions can deadlock
            # XLA:CPU's collectives (see the training loop), and evaluation is not hot.
            chunks = self._chunks(state, setting, check)
            per_task = jax.tree.map(lambda *a: np.concatenate(a), *chunks)
            for name, values in per_task.items():
                mean, ci95 = mean_and_ci95(values)
                results[f"{self.split}/{label}/{name}"] = mean
                results[f"{self.split}/{label}/{name}_ci95"] = ci95
        return results
