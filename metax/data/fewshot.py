"""N-way K-shot episodes sampled on device from an array of classes, inside jit.

The images of a split live in one array ``(num_classes, examples_per_class, *image_shape)``
(Omniglot at 28x28: ~25 MB); an episode draws ``ways`` distinct classes and, for each,
``shots + queries`` distinct examples with `jax.random`, so sampling is part of the compiled
meta-step and costs no host work. Labels are the classes' positions in the random draw, i.e.
permuted per episode.
"""

import gin
import jax
import jax.numpy as jnp
import numpy as np

from metax.data.base import Dataset, MetaBatch, TaskSampler
from metax.types import Array, PRNGKey


def rotations_as_classes(images: np.ndarray) -> np.ndarray:
    """``(classes, n, h, w, c) -> (4 * classes, n, h, w, c)``: each class rotated by 0, 90,
    180 and 270 degrees becomes four classes (Vinyals et al., 2016; the MAML paper)."""
    return np.concatenate([np.rot90(images, k, axes=(2, 3)) for k in range(4)], axis=0)


@gin.register(module="metax.data")
def fewshot(
    images: Array,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
) -> TaskSampler:
    """Episodes from ``images`` of shape ``(classes, examples_per_class, *image_shape)``.

    ``sample_task(rng)`` returns a MetaBatch with support ``x: (ways * shots, *image_shape)``,
    ``y: (ways * shots,)`` int32 labels in ``[0, ways)`` and query ``(ways * queries, ...)``,
    grouped by class (class 0's examples first). ``info["classes"]`` holds the episode's class
    indices into ``images`` (shape ``(ways,)``).
    """
    num_classes, per_class = images.shape[0], images.shape[1]
    if ways < 1 or shots < 1 or queries < 1:
        raise ValueError(
            f"fewshot needs ways, shots, queries >= 1, got {ways}, {shots}, {queries}."
        )
    if ways > num_classes:
        raise ValueError(
            f"fewshot asks for {ways}-way episodes but the split has only {num_classes} classes."
        )
    if shots + queries > per_class:
        raise ValueError(
            f"fewshot asks for {shots} shots + {queries} queries per class but the "
            f"split has only {per_class} examples per class."
        )
    images = jnp.asarray(images)

    def sample_task(rng: PRNGKey) -> MetaBatch:
        k_classes, k_examples = jax.random.split(rng)
        classes = jax.random.permutation(k_classes, num_classes)[:ways]
        keys = jax.random.split(k_examples, ways)
        examples = jax.vmap(lambda k: jax.random.permutation(k, per_class)[: shots + queries])(keys)
        chosen = images[classes[:, None], examples]  # (ways, shots + queries, *image_shape)
        labels = jnp.broadcast_to(
            jnp.arange(ways, dtype=jnp.int32)[:, None], (ways, shots + queries)
        )
        image_shape = images.shape[2:]

        def split(part):
            return Dataset(
                x=chosen[:, part].reshape(-1, *image_shape),
                y=labels[:, part].reshape(-1),
                info={"classes": classes},
            )

        return MetaBatch(train=split(slice(0, shots)), test=split(slice(shots, None)))

    return TaskSampler(sample_task)
