"""N-way K-shot episodes sampled on device from an array of classes, inside jit.

The images of a split live in one array ``(num_classes, examples_per_class, h, w, c)``
(Omniglot at 28x28 in uint8: ~25 MB); an episode draws ``ways`` distinct classes and, for each,
``shots + queries`` distinct examples with `jax.random`, so sampling is part of the compiled
meta-step and costs no host work. Labels are the classes' positions in the random draw, i.e.
permuted per episode. With ``rotations=True`` each class rotated by 90, 180 and 270 degrees is
a further class (Vinyals et al., 2016; the MAML paper), rotated on the fly rather than stored.
"""

from collections.abc import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from metax.data.augment import Augment, augment_images
from metax.data.base import Dataset, MetaBatch, TaskSampler
from metax.types import Array, PRNGKey

AUGMENT_TAG = 1  # fold_in tag of the augmentation keys (independent of the episode's draws)


def check_episode_sizes(
    ways: int, shots: int, queries: int, num_classes: int, smallest_class: int
) -> None:
    """Raises a ValueError unless ``ways``-way episodes of ``shots + queries`` distinct
    examples per class can be drawn from ``num_classes`` classes of at least
    ``smallest_class`` examples."""
    if ways < 1 or shots < 1 or queries < 1:
        raise ValueError(
            f"fewshot needs ways, shots, queries >= 1, got {ways}, {shots}, {queries}."
        )
    if ways > num_classes:
        raise ValueError(
            f"fewshot asks for {ways}-way episodes but the split has only {num_classes} classes."
        )
    if shots + queries > smallest_class:
        raise ValueError(
            f"fewshot asks for {shots} shots + {queries} queries per class but the "
            f"split has only {smallest_class} examples per class (in its smallest class)."
        )


@gin.register(module="metax.data")
def fewshot(
    images: Array,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    rotations: bool = False,
    augmentations: Sequence[Augment] = (),
    augment_query: bool = True,
    groups: Array | None = None,
) -> TaskSampler:
    """Episodes from ``images`` of shape ``(classes, examples_per_class, h, w, c)``; uint8
    images are scaled to float32 in [0, 1].

    ``sample_task(rng)`` returns a MetaBatch with support ``x: (ways * shots, h, w, c)``,
    ``y: (ways * shots,)`` int32 labels in ``[0, ways)`` and query ``(ways * queries, ...)``,
    grouped by class (class 0's examples first). ``info["classes"]`` holds the episode's class
    ids (shape ``(ways,)``): ``r * classes + i`` is class ``i`` rotated by ``r * 90`` degrees.

    ``augmentations`` (`metax.data.augment`: e.g. ``(random_crop(4), horizontal_flip())``) are
    applied in order to every support image and, with ``augment_query``, every query image,
    each with its own key from the episode's; none by default (the episode is then exactly
    the one drawn without this option).

    ``groups``: an int group id per class ``(classes,)`` (e.g. Omniglot's alphabets): every
    episode then draws one group, uniformly among those with at least ``ways`` classes, and its
    ``ways`` classes from that group only (a rotated class keeps its group).
    """
    augmentations = tuple(augmentations)
    per_class = images.shape[1]
    num_classes = images.shape[0] * (4 if rotations else 1)
    check_episode_sizes(ways, shots, queries, num_classes, per_class)
    if rotations and images.shape[2] != images.shape[3]:
        raise ValueError(
            f"fewshot rotations need square images, got {images.shape[2]}x{images.shape[3]}."
        )
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (images.shape[0],):
            raise ValueError(
                f"fewshot groups needs one id per class, shape ({images.shape[0]},), got "
                f"{groups.shape}."
            )
        groups = np.tile(groups, 4) if rotations else groups
        ids, sizes = np.unique(groups, return_counts=True)
        eligible = ids[sizes >= ways]
        if eligible.size == 0:
            raise ValueError(
                f"fewshot groups: no group has {ways} classes (largest: {sizes.max()}); lower "
                f"ways or group classes more coarsely."
            )
        groups, eligible = jnp.asarray(groups), jnp.asarray(eligible)
    images = jnp.asarray(images)
    # Source pixel (row, col) of output pixel (i, j) after k quarter turns (as np.rot90).
    side = images.shape[2]
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    last = side - 1
    pixel_rows = jnp.asarray(np.stack([i, j, last - i, last - j]))
    pixel_cols = jnp.asarray(np.stack([j, last - i, last - j, i]))

    def sample_task(rng: PRNGKey) -> MetaBatch:
        k_classes, k_examples = jax.random.split(rng)
        if groups is None:
            classes = jax.random.permutation(k_classes, num_classes)[:ways]
        else:
            k_group, k_order = jax.random.split(k_classes)
            group = jax.random.choice(k_group, eligible)
            # A random order of the group's classes first: the top `ways` random scores.
            scores = jnp.where(groups == group, jax.random.uniform(k_order, (num_classes,)), -1.0)
            classes = jnp.argsort(-scores)[:ways]
        keys = jax.random.split(k_examples, ways)
        examples = jax.vmap(lambda k: jax.random.permutation(k, per_class)[: shots + queries])(keys)
        base, quarter_turns = classes % images.shape[0], classes // images.shape[0]
        if rotations:
            # One gather reads each class's pixels already rotated (no per-rotation copies).
            rows = pixel_rows[quarter_turns][:, None]
            cols = pixel_cols[quarter_turns][:, None]
            chosen = images[base[:, None, None, None], examples[:, :, None, None], rows, cols]
        else:
            chosen = images[base[:, None], examples]  # (ways, shots + queries, h, w, c)
        if chosen.dtype == jnp.uint8:
            chosen = chosen.astype(jnp.float32) / 255.0
        labels = jnp.broadcast_to(
            jnp.arange(ways, dtype=jnp.int32)[:, None], (ways, shots + queries)
        )
        image_shape = images.shape[2:]

        def split(part, key=None):
            x = chosen[:, part].reshape(-1, *image_shape)
            if key is not None:
                x = augment_images(augmentations, key, x)
            return Dataset(
                x=x,
                y=labels[:, part].reshape(-1),
                info={"classes": classes},
            )

        if not augmentations:
            return MetaBatch(support=split(slice(0, shots)), query=split(slice(shots, None)))
        k_support, k_query = jax.random.split(jax.random.fold_in(rng, AUGMENT_TAG))
        return MetaBatch(
            support=split(slice(0, shots), k_support),
            query=split(slice(shots, None), k_query if augment_query else None),
        )

    return TaskSampler(sample_task)
