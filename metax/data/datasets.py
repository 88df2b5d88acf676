"""Few-shot episode samplers of the standard image benchmarks, gin-configurable: Omniglot
(`omniglot`, its class splits in `metax.data.omniglot_splits`), mini-ImageNet,
tiered-ImageNet, CIFAR-FS, FC100 and any image folder.

Each function prepares its dataset once, offline, with its `metax.data.builders` builder (from
the files in ``manual_dir`` into ``data_dir``, default ``$METAX_TFDS_DIR``, ``$TFDS_DATA_DIR``
or ``~/tensorflow_datasets``), then returns episodes of one class set (``mode``: 'train', 'val'
or 'test'), drawn as ``episodes`` says (`metax.data.Episodes`: ways, shots, queries,
augmentations) and built where ``feed`` says (`metax.data.Feed`): on device, the split as one
array sampled inside the compiled step (`metax.data.fewshot`), or on the host by random access,
each process only its share (`metax.data.host`), for splits that do not fit. Both give the same
layout: support ``x: (ways * shots, h, w, c)``, ``y: (ways * shots,)`` labels grouped by class,
and the query likewise with ``queries`` per class.

Importing this module registers the samplers with gin and imports no TFDS (the builders load
it when a dataset is prepared).
"""

import os
from collections.abc import Mapping, Sequence

import gin

from metax.data.base import TaskSampler
from metax.data.episodes import Episodes, Feed
from metax.data.fewshot import fewshot
from metax.data.host import host_fewshot
from metax.data.omniglot_splits import omniglot_classes_and_alphabets
from metax.data.preprocess import OMNIGLOT_SIZE
from metax.data.storage import SPLIT_NAMES, prepare_once_per_host, prepared_data_dir, source_dir

ImageSize = int | Sequence[int]
SAMPLERS = ("omniglot", "mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100", "image_folder")
# Parameters of metax 0.2's samplers and the settings that replaced them (0.3).
RENAMED_BINDINGS = {
    **{
        f"{sampler}.{name}": f"metax.data.Episodes.{name}"
        for sampler in (*SAMPLERS, "fewshot")
        for name in ("ways", "shots", "queries", "augmentations", "augment_query")
    },
    **{f"{sampler}.feed": "metax.data.Feed.on" for sampler in SAMPLERS},
    **{f"{sampler}.num_threads": "metax.data.Feed.num_threads" for sampler in SAMPLERS},
}


def _shape(image_size: ImageSize, channels: int) -> tuple[int, int, int]:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return height, width, channels


def _settings(episodes, feed) -> tuple[Episodes, Feed]:
    """``episodes`` and ``feed`` as values (their defaults, or gin's, for None); a TypeError
    naming the fix for anything else (metax 0.2 took ``feed='host'`` and ``ways=5``)."""
    episodes, feed = episodes or Episodes(), feed or Feed()
    if not isinstance(episodes, Episodes):
        raise TypeError(
            f"episodes must be a metax.data.Episodes(ways=..., shots=..., queries=...) (in gin "
            f"metax.data.Episodes.ways = ...), got {episodes!r}."
        )
    if not isinstance(feed, Feed):
        raise TypeError(
            f"feed must be a metax.data.Feed(on='device' or 'host') (in gin "
            f"metax.data.Feed.on = 'host'), got {feed!r}."
        )
    return episodes, feed


def image_episodes(
    builder_name: str,
    config,
    manual_dir: str,
    data_dir: str | None,
    mode: str,
    episodes: Episodes | None,
    feed: Feed | None,
):
    """Episodes of split ``mode`` of the dataset that `metax.data.builders`' ``builder_name``
    prepares with ``config`` (an `ImageConfig`) from ``manual_dir`` (see the module
    docstring)."""
    from metax.data import builders  # TFDS: only when a dataset is read.

    if mode not in SPLIT_NAMES:
        raise ValueError(f"mode must be one of {SPLIT_NAMES}, got {mode!r}.")
    episodes, feed = _settings(episodes, feed)
    builder_class = getattr(builders, builder_name)
    data_dir = prepared_data_dir(data_dir)
    builder = prepare_once_per_host(
        lambda: builders.prepare(builder_class, config, manual_dir, data_dir)
    )
    split = builders.SplitSource(builder, mode)
    if feed.on == "device":
        return fewshot(split.class_arrays(), episodes)
    return host_fewshot(split, episodes, feed)


def _image_config(shape: tuple[int, int, int], **settings):
    from metax.data import builders

    return builders.ImageConfig(*shape, **settings)


def _needs(builder_name: str) -> str:
    from metax.data import builders

    return getattr(builders, builder_name).FILES


@gin.register(module="metax.data")
def mini_imagenet(
    mode: str = "train",
    episodes: Episodes | None = None,
    feed: Feed | None = None,
    image_size: ImageSize = 84,
    manual_dir: str | None = None,
    data_dir: str | None = None,
):
    """mini-ImageNet episodes (Ravi & Larochelle split: 64 / 16 / 20 classes of 600 images,
    84x84x3 by default) from ``manual_dir`` or ``$METAX_MINIIMAGENET_DIR`` (see
    `metax.data.builders.MiniImageNet` for the files)."""
    manual_dir = source_dir(manual_dir, "METAX_MINIIMAGENET_DIR", _needs("MiniImageNet"))
    config = _image_config(_shape(image_size, 3))
    return image_episodes("MiniImageNet", config, manual_dir, data_dir, mode, episodes, feed)


@gin.register(module="metax.data")
def tiered_imagenet(
    mode: str = "train",
    episodes: Episodes | None = None,
    feed: Feed | None = None,
    image_size: ImageSize = 84,
    manual_dir: str | None = None,
    data_dir: str | None = None,
):
    """tiered-ImageNet episodes (351 / 97 / 160 classes of unequal size, 84x84x3) from
    ``manual_dir`` or ``$METAX_TIEREDIMAGENET_DIR``; host-fed by default (the training split
    is ~9.5 GB at 84x84x3, and its classes differ in size)."""
    manual_dir = source_dir(manual_dir, "METAX_TIEREDIMAGENET_DIR", _needs("TieredImageNet"))
    config = _image_config(_shape(image_size, 3))
    feed = feed or Feed(on="host")
    return image_episodes("TieredImageNet", config, manual_dir, data_dir, mode, episodes, feed)


def _cifar(variant: str, mode, episodes, feed, image_size, manual_dir, data_dir):
    manual_dir = source_dir(manual_dir, "METAX_CIFAR100_DIR", _needs("CifarFewShot"))
    config = _image_config(_shape(image_size, 3), tag=variant, variant=variant)
    return image_episodes("CifarFewShot", config, manual_dir, data_dir, mode, episodes, feed)


@gin.register(module="metax.data")
def cifar_fs(
    mode: str = "train",
    episodes: Episodes | None = None,
    feed: Feed | None = None,
    image_size: ImageSize = 32,
    manual_dir: str | None = None,
    data_dir: str | None = None,
):
    """CIFAR-FS episodes (Bertinetto et al., 2019: 64 / 16 / 20 CIFAR-100 classes of 600
    images, 32x32x3) from the CIFAR-100 archive in ``manual_dir`` or ``$METAX_CIFAR100_DIR``."""
    return _cifar("cifar_fs", mode, episodes, feed, image_size, manual_dir, data_dir)


@gin.register(module="metax.data")
def fc100(
    mode: str = "train",
    episodes: Episodes | None = None,
    feed: Feed | None = None,
    image_size: ImageSize = 32,
    manual_dir: str | None = None,
    data_dir: str | None = None,
):
    """FC100 episodes (Oreshkin et al., 2018: CIFAR-100 split by superclass, 12 / 4 / 4
    superclasses = 60 / 20 / 20 classes, 32x32x3) from the CIFAR-100 archive in
    ``manual_dir`` or ``$METAX_CIFAR100_DIR``."""
    return _cifar("fc100", mode, episodes, feed, image_size, manual_dir, data_dir)


@gin.register(module="metax.data")
def image_folder(
    root: str = gin.REQUIRED,
    classes: Mapping[str, Sequence[str]] = gin.REQUIRED,
    mode: str = "train",
    episodes: Episodes | None = None,
    feed: Feed | None = None,
    image_size: ImageSize = 84,
    channels: int = 3,
    data_dir: str | None = None,
):
    """Episodes of any ``root/<class>/*.{png,jpg,jpeg}``: ``classes`` maps 'train', 'val'
    and 'test' to class folder names (disjoint); images resized to ``image_size`` with
    ``channels`` (1: grey, 3: RGB)."""
    from metax.data import builders

    config = builders.image_folder_config(classes, *_shape(image_size, channels))
    root = os.path.expanduser(root)
    return image_episodes("ImageFolder", config, root, data_dir, mode, episodes, feed)


@gin.register(module="metax.data")
def omniglot(
    mode: str = "train",
    splits: str = "standard",
    episodes: Episodes | None = None,
    rotations: bool = True,
    within_alphabet: bool = False,
    image_size: int = OMNIGLOT_SIZE,
    source: str = "zips",
    manual_dir: str | None = None,
    data_dir: str | None = None,
) -> TaskSampler:
    """N-way K-shot Omniglot episodes, sampled on device.

    Args:
      mode: ``"train"``, ``"val"`` or ``"test"``: which class set.
      splits: ``"standard"``, ``"standard_val"``, ``"minimal"`` or ``"minimal_val"``
        (`metax.data.omniglot_splits.omniglot_classes_and_alphabets`).
      episodes: ways, shots, queries, augmentations (`metax.data.Episodes`); rotations as
        extra classes are Omniglot's usual augmentation.
      rotations: each character rotated by 90, 180 and 270 degrees is a further class (the
        MAML paper).
      within_alphabet: every episode's classes come from one alphabet (the harder protocol
        of Lake et al.).
      image_size: square side of the images (28 by default).
      source: ``"zips"`` (offline, from ``manual_dir`` or ``$METAX_OMNIGLOT_DIR``) or
        ``"tfds"`` (TFDS's ``omniglot`` builder, which downloads).
      manual_dir, data_dir: where the zips are, and where the prepared data lives
        (default ``$METAX_TFDS_DIR``, ``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``).

    Returns:
      A `TaskSampler` of ``(image_size, image_size, 1)`` float images in [0, 1], ink 1. The
      data is prepared once per image size; every host loads the whole split (any task may
      draw any class) and samples only its own tasks.
    """
    classes, alphabets = omniglot_classes_and_alphabets(
        mode, splits, source, manual_dir, data_dir, image_size
    )
    return fewshot(
        classes,
        episodes,
        rotations=rotations,
        groups=alphabets if within_alphabet else None,
    )
