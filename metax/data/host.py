"""The host-fed path: tasks built on the host (for data larger than device memory), each
process building only its share, lifted into one task-sharded global array.

A `HostTaskSampler` builds one task from a `numpy.random.Generator`; task ``i`` of step (or
evaluation chunk) ``t`` of stream ``s`` is drawn from ``default_rng([seed, s, t, i])``, so a
meta-batch does not depend on the number of devices or processes, and a resumed run replays
it. `meta_batches` runs the builders in grain worker threads ahead of the training loop and
lifts each process's tasks with `jax.make_array_from_process_local_data` in a background
thread, so the device does not wait for the host. Images travel as uint8 and are scaled to
float32 on device (`scale_images`), as the on-device sampler does.
"""

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from metax.data.base import Dataset, MetaBatch, TaskSampler
from metax.data.episodes import Episodes, Feed
from metax.mesh import task_sharded

if TYPE_CHECKING:
    from metax.data.builders import SplitSource


class HostTaskSampler(NamedTuple):
    """``sample_task(rng: np.random.Generator) -> MetaBatch`` of numpy arrays (one task, no
    task axis); ``num_threads`` grain threads build tasks, ``prefetch`` meta-batches are kept
    ready ahead of the device. ``target_fn`` is None (no regression curves)."""

    sample_task: Callable[[np.random.Generator], MetaBatch]
    num_threads: int = 4
    prefetch: int = 2
    target_fn: None = None


Sampler = TaskSampler | HostTaskSampler
"""Either kind of sampler: drawn on device inside the compiled step, or built on the host."""


def task_rng(seed: int, stream: int, step: int, task: int) -> np.random.Generator:
    """The generator of task ``task`` of step ``step`` of stream ``stream``."""
    return np.random.default_rng([seed, stream, step, task])


def host_meta_batch(
    sampler: HostTaskSampler, seed: int, stream: int, step: int, task_ids: np.ndarray
) -> MetaBatch:
    """Tasks ``task_ids`` of ``step``, stacked on a leading task axis (numpy)."""
    tasks = [sampler.sample_task(task_rng(seed, stream, step, int(i))) for i in task_ids]
    return jax.tree.map(lambda *xs: np.stack(xs), *tasks)


def scale_images(batch: MetaBatch) -> MetaBatch:
    """uint8 inputs -> float32 in [0, 1] (`metax.data.preprocess.scale`; numpy or jax); other
    inputs unchanged."""

    def scaled(d: Dataset) -> Dataset:
        if d.x.dtype == np.uint8:
            return d._replace(x=d.x.astype(np.float32) / np.float32(255.0))
        return d

    return MetaBatch(support=scaled(batch.support), query=scaled(batch.query))


def local_task_ids(sharding: jax.sharding.Sharding, num_tasks: int) -> np.ndarray:
    """The global task indices that this process's devices hold under ``sharding``, in
    order (what `jax.make_array_from_process_local_data` expects of this process)."""
    ids: set[int] = set()
    for index in sharding.addressable_devices_indices_map((num_tasks,)).values():
        ids.update(range(num_tasks) if index is None else range(num_tasks)[index[0]])
    return np.asarray(sorted(ids), dtype=np.int64)


def lift(local: MetaBatch, sharding: jax.sharding.Sharding, num_tasks: int) -> MetaBatch:
    """This process's tasks (numpy, leading axis = its share) -> a global MetaBatch of
    ``num_tasks`` tasks, task-sharded."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x, (num_tasks, *x.shape[1:])),
        local,
    )


def meta_batches(
    sampler: HostTaskSampler,
    seed: int,
    stream: int,
    first_step: int,
    last_step: int,
    num_tasks: int,
    mesh: Mesh,
) -> Iterator[MetaBatch]:
    """Task-sharded global meta-batches of steps ``first_step .. last_step - 1``, built ahead
    on the host: this process builds only the tasks of its own devices."""
    import grain  # Imported here: it takes seconds, and only the host-fed path needs it.

    tasks = task_sharded(mesh)
    mine = local_task_ids(tasks, num_tasks)
    steps = grain.MapDataset.range(first_step, last_step)
    built = steps.map(lambda step: host_meta_batch(sampler, seed, stream, step, mine))
    ahead = built.to_iter_dataset(
        # Grain runs at most prefetch_buffer_size builders at once.
        grain.ReadOptions(
            num_threads=sampler.num_threads,
            prefetch_buffer_size=max(sampler.prefetch, sampler.num_threads),
        )
    )
    lifted = ahead.map(lambda local: lift(local, tasks, num_tasks))
    return iter(
        grain.experimental.ThreadPrefetchIterDataset(lifted, prefetch_buffer_size=sampler.prefetch)
    )


def host_fewshot(
    split: "SplitSource", episodes: Episodes | None = None, feed: Feed | None = None
) -> HostTaskSampler:
    """N-way K-shot episodes read from a prepared split by random access (`SplitSource`):
    ``ways`` distinct classes, ``shots + queries`` distinct images of each, labels the classes'
    positions in the draw; classes may differ in size. Same layout as `metax.data.fewshot`
    (support ``x: (ways * shots, h, w, c)`` uint8, grouped by class; ``info["classes"]``).

    Args:
      split: the prepared split.
      episodes: ways, shots, queries (`metax.data.Episodes`; augmentations run on device
        only, so none here).
      feed: its ``num_threads`` and ``prefetch`` (`metax.data.Feed`).
    """
    episodes, feed = episodes or Episodes(), feed or Feed(on="host")
    if episodes.augmentations:
        raise ValueError(
            "Augmentations run inside the on-device sampler: use Feed(on='device'), or no "
            "augmentations with the host feed."
        )
    ways, shots = episodes.ways, episodes.shots
    num_classes = len(split.counts)
    episodes.check_fits(num_classes, int(split.counts.min()))
    labels = np.repeat(np.arange(ways, dtype=np.int32), episodes.per_class).reshape(ways, -1)

    def sample_task(rng: np.random.Generator) -> MetaBatch:
        classes = rng.choice(num_classes, ways, replace=False)
        picks = np.stack(
            [rng.choice(split.counts[c], episodes.per_class, replace=False) for c in classes]
        )
        images = split.images(split.offsets[classes][:, None] + picks)
        info = {"classes": classes.astype(np.int32)}

        def part(sl) -> Dataset:
            x = images[:, sl].reshape(-1, *images.shape[2:])
            # numpy on the host (`lift` makes them device arrays).
            return Dataset(x=x, y=labels[:, sl].reshape(-1), info=info)  # type: ignore[arg-type]

        return MetaBatch(support=part(slice(0, shots)), query=part(slice(shots, None)))

    return HostTaskSampler(sample_task, feed.num_threads, feed.prefetch)
