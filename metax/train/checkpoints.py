"""A run's checkpoints: orbax managers of ``workdir/checkpoints`` (and of the best one by a
validation metric), and restoring the latest readable one, setting damaged ones aside."""

import collections
import dataclasses

import gin
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from metax.validate import check_int

CHECKPOINTS = "checkpoints"
BEST_CHECKPOINT = "best_checkpoint"
CORRUPT_CHECKPOINTS = "corrupt_checkpoints"


@gin.configurable(module="metax.train")
@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """When a run saves its state (`metax.train.TrainConfig.checkpoints`).

    Attributes:
      every: a checkpoint every this many meta-steps (and at the last step, and when a
        signal stops the run).
      max_to_keep: the newest checkpoints kept; older ones are deleted.
    """

    every: int = 1000
    max_to_keep: int = 3

    def __post_init__(self):
        check_int("Checkpoints.every", self.every)
        check_int("Checkpoints.max_to_keep", self.max_to_keep)


def checkpoint_manager(
    workdir: epath.Path, max_to_keep: int | None = None, read_only: bool = False
) -> ocp.CheckpointManager:
    """Orbax's manager of ``workdir/checkpoints``: a checkpoint is written to a temporary folder
    and renamed when complete, so a killed save never shows up as a step. ``read_only``:
    reads only (creates, saves and deletes nothing: what evaluating a run needs)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only
    )
    return _opened(workdir / CHECKPOINTS, options)


def best_checkpoint_manager(
    workdir: epath.Path, metric: str, mode: str, read_only: bool = False
) -> ocp.CheckpointManager:
    """Orbax's manager of ``workdir/best_checkpoint``: every save carries ``{metric: value}``
    and orbax keeps only the best one (``mode`` "max" or "min"; orbax's best-checkpoint
    support), so ``best_step()`` survives restarts with the checkpoint itself. ``read_only``:
    as for `checkpoint_manager`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda metrics: metrics[metric],
        best_mode=mode,
        keep_checkpoints_without_metrics=False,
        create=not read_only,
        read_only=read_only,
    )
    return _opened(workdir / BEST_CHECKPOINT, options)


def _opened(directory: epath.Path, options) -> ocp.CheckpointManager:
    """A manager of ``directory``. Opening lists the steps, which fails when a run deletes
    one meanwhile (a reader beside a run that keeps its newest checkpoints): retried."""
    for _ in range(RESTORE_ATTEMPTS):
        try:
            return ocp.CheckpointManager(
                directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
            )
        except FileNotFoundError:
            continue
    return ocp.CheckpointManager(
        directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


def latest_step(workdir: epath.Path) -> int | None:
    """The step of the newest complete checkpoint in ``workdir/checkpoints`` (None if none),
    read without creating or changing anything."""
    if not (workdir / CHECKPOINTS).exists():
        return None
    with checkpoint_manager(workdir, read_only=True) as manager:
        return manager.latest_step()


def _shapes(tree) -> collections.Counter:
    """How many arrays of each shape: comparable between a checkpoint's metadata (where
    NamedTuples became lists) and a state."""
    return collections.Counter(tuple(leaf.shape) for leaf in jax.tree.leaves(tree))


class _DeletedError(Exception):
    """A checkpoint deleted while it was read (a run that keeps only its newest ones)."""


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state, set_aside: bool = True, step: int | None = None
):
    """``(state, step)`` from the latest readable checkpoint (or exactly ``step``), placed as
    ``abstract_state`` says (shapes, dtypes, shardings); ``(None, None)`` if there is none.

    An unreadable checkpoint (truncated or damaged files) is skipped with a warning and, if
    ``set_aside``, moved to ``workdir/corrupt_checkpoints/<step>`` (never deleted) so the run
    can write that step again. A readable checkpoint whose arrays have other shapes than
    ``abstract_state`` (the config changed the model) raises a ValueError and stays in place.
    Safe while a run writes the workdir: a checkpoint that the run deletes while it is read
    (``Checkpoints.max_to_keep``) is replaced by the newest complete one, or, for an exact
    ``step``, raises a FileNotFoundError saying so.
    """
    for _ in range(RESTORE_ATTEMPTS):
        steps = sorted(_listed_steps(manager), reverse=True)
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"No complete checkpoint of step {step} in {manager.directory}; "
                    f"complete ones: {sorted(steps)}."
                )
            steps = [step]
        try:
            return _restore_first_readable(manager, abstract_state, steps, set_aside)
        except _DeletedError as deleted:
            if step is not None:
                raise FileNotFoundError(
                    f"The checkpoint of step {step} in {manager.directory} was deleted while it "
                    f"was read (the run keeps its newest Checkpoints.max_to_keep); read a newer "
                    f"one."
                ) from None
            logging.info("%s; reading the newest complete one.", deleted)
    raise FileNotFoundError(
        f"The checkpoints in {manager.directory} were deleted while they were read, "
        f"{RESTORE_ATTEMPTS} times: the run replaces them faster than they can be read. Read "
        f"one when it pauses, or keep more (Checkpoints.max_to_keep)."
    )


RESTORE_ATTEMPTS = 10


def _listed_steps(manager: ocp.CheckpointManager) -> list[int]:
    """The complete steps, listed afresh; retried while a run deletes one as it is listed."""
    for _ in range(RESTORE_ATTEMPTS):
        try:
            manager.reload()
            return list(manager.all_steps())
        except FileNotFoundError:
            continue
    manager.reload()
    return list(manager.all_steps())


def _restore_first_readable(manager, abstract_state, steps: list[int], set_aside: bool):
    """The first of ``steps`` that restores; raises `_DeletedError` if one vanishes meanwhile."""
    for candidate in steps:
        stored: collections.Counter | None
        try:
            stored = _shapes(dict(manager.item_metadata(candidate))) or None
        except Exception:  # noqa: BLE001 (unreadable metadata: the restore below decides)
            stored = None
        if stored is not None and stored != _shapes(abstract_state):
            raise ValueError(
                f"The checkpoint of step {candidate} in {manager.directory} holds arrays of "
                f"other shapes than this config's model and learner (the config changed the "
                f"model); use a new --workdir for it."
            )
        try:
            restored = manager.restore(candidate, args=ocp.args.StandardRestore(abstract_state))
            return restored, candidate
        except Exception as error:  # noqa: BLE001 (any failure to read means: unreadable)
            now = _listed_steps(manager)
            if candidate not in now or max(now) > candidate:
                # A run writing the workdir moved on and deletes its old checkpoints (a
                # damaged checkpoint stays listed, and no newer one comes while it is read).
                raise _DeletedError(f"The checkpoint of step {candidate} was deleted") from None
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            logging.warning(
                "The checkpoint of step %d is unreadable (%s); falling back to the one before.",
                candidate,
                reason,
            )
            if set_aside:
                _set_aside(manager, candidate)
    return None, None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    from jax.experimental import multihost_utils

    source = epath.Path(manager.directory) / str(step)
    target_dir = epath.Path(manager.directory).parent / CORRUPT_CHECKPOINTS
    if jax.process_index() == 0:
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / str(step)
        while target.exists():
            target = target_dir / f"{target.name}_"
        source.rename(target)
        logging.warning("Moved the unreadable checkpoint to %s.", target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"metax: checkpoint {step} set aside")
    manager.reload()
