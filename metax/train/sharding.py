"""A learner's meta-step on the device mesh (`metax.mesh`, re-exported here: ``task_mesh``,
``replicated``, ``task_sharded``, ``check_divisible``): a meta-batch placed with its task axis
sharded, and the meta-step compiled for the mesh."""

import jax
from jax.sharding import Mesh

from metax.data.base import MetaBatch, num_tasks
from metax.learner.base import Learner
from metax.mesh import TASK_AXIS, check_divisible, replicated, task_mesh, task_sharded

__all__ = [
    "TASK_AXIS",
    "check_divisible",
    "jit_meta_step",
    "replicated",
    "shard_meta_batch",
    "task_mesh",
    "task_sharded",
]


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
