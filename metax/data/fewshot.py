"""N-way K-shot episodes sampled on device from an array of classes, inside jit.

The images of a split live in one array ``(num_classes, examples_per_class, h, w, c)``
(Omniglot at 28x28 in uint8: tens of MB); an episode draws ``ways`` distinct classes and, for each,
``shots + queries`` distinct examples with `jax.random`, so sampling is part of the compiled
meta-step and costs no host work. Labels are the classes' positions in the random draw, i.e.
permuted per episode. With ``rotations=True`` each class rotated by 90, 180 and 270 degrees is
a further class (Vinyals et al., 2016; the MAML paper), rotated on the fly rather than stored.
"""

import gin
import jax
import jax.numpy as jnp
import numpy as np

from metax.data.augment import augment_images
from metax.data.base import Dataset, MetaBatch, TaskSampler
from metax.data.episodes import Episodes
from metax.types import Array, PRNGKey

AUGMENT_TAG = 1  # fold_in tag of the augmentation keys (independent of the episode's draws)


def _eligible_groups(groups: np.ndarray, num_classes: int, ways: int, rotations: bool):
    """The group of each class (rotated classes keep theirs), checked, and the groups with at
    least ``ways`` classes, as device arrays."""
    if groups.shape != (num_classes,):
        raise ValueError(
            f"fewshot groups needs one id per class, shape ({num_classes},), got {groups.shape}."
        )
    groups = np.tile(groups, 4) if rotations else groups
    ids, sizes = np.unique(groups, return_counts=True)
    eligible = ids[sizes >= ways]
    if eligible.size == 0:
        raise ValueError(
            f"fewshot groups: no group has {ways} classes (largest: {sizes.max()}); lower "
            f"ways or group classes more coarsely."
        )
    return jnp.asarray(groups), jnp.asarray(eligible)


@gin.register(module="metax.data")
def fewshot(
    images: Array,
    episodes: Episodes | None = None,
    rotations: bool = False,
    groups: Array | None = None,
) -> TaskSampler:
    """Episodes from ``images`` of shape ``(classes, examples_per_class, h, w, c)``; uint8
    images are scaled to float32 in [0, 1] (`metax.data.preprocess.scale`).

    Args:
      images: the split, ``(classes, examples_per_class, h, w, c)``.
      episodes: ways, shots, queries and augmentations (`metax.data.Episodes`; None: its
        defaults, or its gin bindings).
      rotations: each class rotated by 90, 180 and 270 degrees is a further class.
      groups: an int group id per class ``(classes,)`` (e.g. Omniglot's alphabets): every
        episode then draws one group, uniformly among those with at least ``ways`` classes,
        and its ``ways`` classes from that group only (a rotated class keeps its group).

    Returns:
      A `TaskSampler` whose ``sample_task(rng)`` returns a MetaBatch with support
      ``x: (ways * shots, h, w, c)``, ``y: (ways * shots,)`` int32 labels in ``[0, ways)`` and
      query ``(ways * queries, ...)``, grouped by class (class 0's examples first).
      ``info["classes"]`` holds the episode's class ids ``(ways,)``: ``r * classes + i`` is
      class ``i`` rotated by ``r * 90`` degrees. Augmentations are applied in order to every
      support image and, with ``augment_query``, every query image, each with its own key
      from the episode's; without augmentations the episode is exactly the one drawn.
    """
    episodes = episodes or Episodes()
    ways, shots, queries = episodes.ways, episodes.shots, episodes.queries
    augmentations, augment_query = episodes.augmentations, episodes.augment_query
    per_class = images.shape[1]
    num_classes = images.shape[0] * (4 if rotations else 1)
    episodes.check_fits(num_classes, per_class)
    if rotations and images.shape[2] != images.shape[3]:
        raise ValueError(
            f"fewshot rotations need square images, got {images.shape[2]}x{images.shape[3]}."
        )
    class_groups, eligible = None, None
    if groups is not None:
        class_groups, eligible = _eligible_groups(
            np.asarray(groups), images.shape[0], ways, rotations
        )
    images = jnp.asarray(images)
    # Source pixel (row, col) of output pixel (i, j) after k quarter turns (as np.rot90).
    side = images.shape[2]
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    last = side - 1
    pixel_rows = jnp.asarray(np.stack([i, j, last - i, last - j]))
    pixel_cols = jnp.asarray(np.stack([j, last - i, last - j, i]))

    def sample_task(rng: PRNGKey) -> MetaBatch:
        k_classes, k_examples = jax.random.split(rng)
        if class_groups is None:
            classes = jax.random.permutation(k_classes, num_classes)[:ways]
        else:
            k_group, k_order = jax.random.split(k_classes)
            group = jax.random.choice(k_group, jnp.asarray(eligible))
            # A random order of the group's classes first: the top `ways` random scores.
            scores = jnp.where(
                class_groups == group, jax.random.uniform(k_order, (num_classes,)), -1.0
            )
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
        if chosen.dtype == jnp.uint8:  # As metax.data.preprocess.scale.
            chosen = chosen.astype(jnp.float32) / jnp.float32(255.0)
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
