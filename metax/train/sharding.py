"""One device mesh with one axis: the task axis of a meta-batch is split over it.

Meta-parameters and optimizer state are replicated; each device adapts its share of the
tasks; the mean over tasks in the meta-gradient becomes an all-reduce that the compiler inserts
(jit with shardings, no hand-written collectives, so no risk of summing twice).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metax.data.base import MetaBatch, num_tasks
from metax.learner.base import Learner

TASK_AXIS = "tasks"


def task_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``"tasks"`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (TASK_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (meta-parameters, optimizer state, metrics)."""
    return NamedSharding(mesh, P())


def task_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (task) axis is split over the mesh; other axes are whole."""
    return NamedSharding(mesh, P(TASK_AXIS))


def check_divisible(num: int, mesh: Mesh, what: str = "meta-batch") -> None:
    """Raises a ValueError naming both numbers unless ``num`` tasks divide over the mesh."""
    devices = mesh.size
    if num % devices:
        lower, upper = (num // devices) * devices, (num // devices + 1) * devices
        suggestion = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"The {what} of {num} tasks does not divide over the {devices} devices of the mesh: "
            f"each device must get the same number of tasks. Use a multiple of {devices} "
            f"(e.g. {suggestion}), or run on fewer devices."
        )


def shard_meta_batch(meta_batch: MetaBatch, mesh: Mesh) -> MetaBatch:
    """Places a host or device MetaBatch on the mesh with its task axis sharded."""
    check_divisible(num_tasks(meta_batch), mesh)
    return jax.device_put(meta_batch, task_sharded(mesh))


def jit_meta_step(learner: Learner, mesh: Mesh):
    """Compiles ``learner.meta_step(state, meta_batch, rng) -> (state, metrics)`` for the mesh.

    The state is replicated and donated (its buffers are reused for the new state), the
    meta-batch is task-sharded, metrics come back replicated. A meta-batch whose task count does
    not divide over the devices raises a ValueError before compilation.
    """
    rep, tasks = replicated(mesh), task_sharded(mesh)
    step = jax.jit(
        learner.meta_step,
        in_shardings=(rep, tasks, rep),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )

    def meta_step(state, meta_batch, rng):
        check_divisible(num_tasks(meta_batch), mesh)
        return step(state, meta_batch, rng)

    return meta_step
