"""The device mesh every metax program runs on: one axis, ``"tasks"``, over all devices; the
task axis of a meta-batch is split over it, everything else is replicated.

Meta-parameters and optimizer state are replicated; each device adapts its share of the tasks;
the mean over tasks in the meta-gradient becomes an all-reduce that the compiler inserts (jit
with shardings, no hand-written collectives, so no risk of summing twice). The bottom layer:
data, learners and the training loop all place arrays with these.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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
