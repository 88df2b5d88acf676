"""A trained run back from its workdir: its settings (from the stored gin config), its learner
and a checkpoint's `MetaState`; and its evaluation on held-out tasks.

    run = metax.train.restore_run("runs/maml_omniglot", checkpoint="best")
    params, model_state = run.learner.adapt(run.state, support, key, num_inner_steps=3)

Reading a run changes nothing in its workdir (the checkpoint managers are read-only), and it is
safe while the run still trains: only complete checkpoints are read.
"""

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import gin
import jax
from etils import epath

from metax.learner.base import Learner, MetaState
from metax.train import checkpoints as run_checkpoints
from metax.train import sharding
from metax.train import workdir as run_dir
from metax.train.config import TrainConfig
from metax.train.evaluation import Evaluator
from metax.train.step import abstract_state, make_train_step

CHECKPOINT_CHOICES = ("latest", "best")


class RestoredRun(NamedTuple):
    """A run restored from its workdir.

    Attributes:
      config: its settings (`TrainConfig`): learner, samplers, seed, evaluation, ...
      state: the restored `MetaState` (replicated over this machine's devices).
      step: the meta-step of that checkpoint.
      workdir: the run's folder.
      checkpoint: which checkpoint: ``"latest"``, ``"best"`` or ``"step"`` (one asked by number).
    """

    config: TrainConfig
    state: MetaState
    step: int
    workdir: epath.Path
    checkpoint: str

    @property
    def learner(self) -> Learner:
        return self.config.learner


class ConfigError(ValueError):
    """A stored config or a binding that gin cannot parse. ``where``: which one; the error's
    ``__cause__`` is gin's."""

    def __init__(self, where: str, error: Exception):
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        super().__init__(f"{where}: {first}")
        self.where = where


@contextlib.contextmanager
def _gin_config(text: str, source: str, bindings: Sequence[str]) -> Iterator[None]:
    """gin holds ``text`` (read from ``source``) and then ``bindings`` inside; the caller's
    config is put back after (gin's config is global: restoring a run must not change the
    caller's)."""
    saved = gin.config_str()
    gin.clear_config()
    try:
        for where, parse in (
            (source, lambda: gin.parse_config(text)),
            ("the bindings", lambda: gin.parse_config(list(bindings))),
        ):
            try:
                parse()
            except (ValueError, KeyError, SyntaxError, TypeError) as error:
                raise ConfigError(where, error) from error
        yield
    finally:
        gin.clear_config()
        gin.parse_config(saved)


def load_config(workdir: str, bindings: Sequence[str] = ()) -> TrainConfig:
    """The `TrainConfig` of the run in ``workdir``: its stored gin config (the latest
    ``config.<n>.gin``, else ``config.gin``) with ``bindings`` applied after it (e.g.
    ``"Evaluation.num_tasks = 100"`` or another ``Evaluation.sampler``). Builds the learner and
    the samplers (which may load their data). Raises a FileNotFoundError if ``workdir`` holds
    no run."""
    path = run_dir.resolve(workdir)
    stored = run_dir.stored_config_path(path)
    if stored is None:
        raise FileNotFoundError(
            f"{path} holds no metax run (no config.gin); pass the workdir of a run."
        )
    with _gin_config(stored.read_text(), f"the stored config {stored}", bindings):
        return TrainConfig()  # type: ignore[call-arg]  # gin binds them.


def _checkpoint_manager(path: epath.Path, config: TrainConfig, checkpoint: str | int):
    """A read-only manager of the asked checkpoints and the step to restore (None: latest)."""
    if checkpoint == "best":
        if config.validation is None:
            raise ValueError(
                f"The run in {path} has no validation (train.validation), so no best "
                f"checkpoint; restore checkpoint='latest' or a step."
            )
        metric, mode = config.validation.selection(config.learner, config.evaluation.inner_steps)
        manager = run_checkpoints.best_checkpoint_manager(path, metric, mode, read_only=True)
        step = manager.best_step()
        if step is None:
            manager.close()
            raise FileNotFoundError(f"No best checkpoint in {path} yet: no validation has run.")
        return manager, step
    if checkpoint == "latest":
        return run_checkpoints.checkpoint_manager(path, read_only=True), None
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int):
        raise ValueError(
            f"checkpoint must be 'latest', 'best' or a step number, got {checkpoint!r}."
        )
    return run_checkpoints.checkpoint_manager(path, read_only=True), checkpoint


def restore_run(
    workdir: str, checkpoint: str | int = "latest", bindings: Sequence[str] = ()
) -> RestoredRun:
    """A run's settings and one of its checkpoints, on this machine's devices (any number).

    Args:
      workdir: the run's folder (local, or a ``gs://`` path).
      checkpoint: ``"latest"`` (the newest complete checkpoint), ``"best"`` (the best by the
        run's validation metric; runs with validation) or a step number.
      bindings: gin bindings applied after the stored config (`load_config`).

    Returns:
      A `RestoredRun`: ``config`` (learner, samplers, settings), ``state``, ``step``.

    Raises:
      FileNotFoundError: no run in ``workdir``, or no such complete checkpoint.
      ValueError: ``"best"`` on a run without validation, or a bad ``checkpoint``.
    """
    path = run_dir.resolve(workdir)
    config = load_config(workdir, bindings)
    mesh = sharding.task_mesh()
    # The state's shapes do not depend on the batch: one task per device fits any mesh.
    init, _ = make_train_step(
        config.learner, config.train_sampler, mesh.size, mesh, config.seed, on_nonfinite="skip"
    )
    manager, step = _checkpoint_manager(path, config, checkpoint)
    try:
        state, step = run_checkpoints.restore_latest(
            manager, abstract_state(init, mesh), set_aside=False, step=step
        )
    finally:
        manager.close()
    if state is None:
        raise FileNotFoundError(f"No complete checkpoint in {path}: nothing to restore yet.")
    which = checkpoint if checkpoint in CHECKPOINT_CHOICES else "step"
    return RestoredRun(config, state, step, path, which)


def evaluate_run(
    workdir: str,
    checkpoint: str | int = "latest",
    num_tasks: int | None = None,
    bindings: Sequence[str] = (),
) -> dict[str, float]:
    """Evaluates a run's checkpoint on its held-out tasks (`restore_run`), with its settings:
    on a finished run the same tasks and numbers as its own final evaluation.

    Args:
      workdir, checkpoint, bindings: as `restore_run` (bindings may change the evaluation:
        ``"Evaluation.inner_steps = (1, 10)"``, another ``Evaluation.sampler``, ...).
      num_tasks: held-out tasks (default: the run's ``Evaluation.num_tasks``).

    Returns:
      ``{"step", "eval/<setting>/<metric>", "..._ci95", "eval/num_tasks"}``, also written to
      ``workdir/eval_step_<step>.json`` (``eval_best_step_<step>.json`` for the best one) by
      process 0.
    """
    run = restore_run(workdir, checkpoint, bindings)
    config = run.config
    evaluation = config.evaluation
    if num_tasks is not None:
        evaluation = dataclasses.replace(evaluation, num_tasks=num_tasks)
    mesh = sharding.task_mesh()
    evaluator = Evaluator(
        config.learner, config.eval_sampler, mesh, config.seed, evaluation, config.eval_batch_size
    )
    results = {"step": float(run.step), **evaluator(run.state)}
    if jax.process_index() == 0:
        best = "best_" if run.checkpoint == "best" else ""
        name = f"eval_{best}step_{run.step}.json"
        (run.workdir / name).write_text(json.dumps(results, indent=2, sort_keys=True))
    return results
