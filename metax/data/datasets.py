"""Few-shot episode samplers of the standard image benchmarks, gin-configurable.

Each function prepares its dataset once, offline, with its `metax.data.builders` builder (from
the files in ``manual_dir`` into ``data_dir``, default ``$METAX_TFDS_DIR``, ``$TFDS_DATA_DIR``
or ``~/tensorflow_datasets``), then returns episodes of one class set (``mode``: 'train', 'val'
or 'test'). ``feed='device'`` loads the split into one array and samples on device
(`metax.data.fewshot`: the fastest where the split fits in device memory); ``feed='host'``
builds episodes on the host by random access, each process only its share of the tasks
(`metax.data.host`), for splits that do not fit. Both give the same layout: support
``x: (ways * shots, h, w, c)``, ``y: (ways * shots,)`` labels grouped by class, and the query
likewise with ``queries`` per class.
"""

import os
from collections.abc import Mapping, Sequence

import gin

from metax.data import builders
from metax.data.augment import Augment
from metax.data.fewshot import fewshot
from metax.data.host import host_fewshot

FEEDS = ("device", "host")


def resolve_dir(path: str | None, env: str, fallback: str | None, needs: str) -> str:
    """``path``, else ``$env``, else ``fallback``; raises FileNotFoundError with ``needs``
    (what to put there) when none is given."""
    path = path or os.environ.get(env) or fallback
    if path is None:
        raise FileNotFoundError(f"{needs} (no manual_dir given and ${env} is not set)")
    return os.path.expanduser(path)


def episodes(
    builder_class: type[builders.FewShotImageBuilder],
    config: builders.ImageConfig,
    manual_dir: str,
    data_dir: str | None,
    mode: str,
    ways: int,
    shots: int,
    queries: int,
    feed: str,
    augmentations: Sequence[Augment] = (),
    augment_query: bool = True,
    num_threads: int = 4,
):
    """Episodes of split ``mode`` of a prepared dataset (see the module docstring)."""
    if mode not in builders.SPLIT_NAMES:
        raise ValueError(f"mode must be one of {builders.SPLIT_NAMES}, got {mode!r}.")
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}.")
    data_dir = builders.prepared_data_dir(data_dir)
    builder = builders.prepare_once_per_host(
        lambda: builders.prepare(builder_class, config, manual_dir, data_dir)
    )
    split = builders.SplitSource(builder, mode)
    if feed == "device":
        return fewshot(
            split.class_arrays(),
            ways=ways,
            shots=shots,
            queries=queries,
            augmentations=augmentations,
            augment_query=augment_query,
        )
    if augmentations:
        raise ValueError(
            "Augmentations run inside the on-device sampler: use feed='device', or no "
            "augmentations with feed='host'."
        )
    return host_fewshot(split, ways=ways, shots=shots, queries=queries, num_threads=num_threads)


def _sized(image_size: int | Sequence[int], channels: int, **settings) -> builders.ImageConfig:
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return builders.ImageConfig(height, width, channels, **settings)


@gin.register(module="metax.data")
def mini_imagenet(
    mode: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    image_size: int | Sequence[int] = 84,
    feed: str = "device",
    manual_dir: str | None = None,
    data_dir: str | None = None,
    augmentations: Sequence[Augment] = (),
    augment_query: bool = True,
    num_threads: int = 4,
):
    """mini-ImageNet episodes (Ravi & Larochelle split: 64 / 16 / 20 classes of 600 images,
    84x84x3 by default) from ``manual_dir`` or ``$METAX_MINIIMAGENET_DIR`` (see
    `metax.data.builders.MiniImageNet` for the files)."""
    manual_dir = resolve_dir(
        manual_dir, "METAX_MINIIMAGENET_DIR", None, builders.MiniImageNet.FILES
    )
    return episodes(
        builders.MiniImageNet, _sized(image_size, 3), manual_dir, data_dir, mode, ways, shots,
        queries, feed, augmentations, augment_query, num_threads,
    )  # fmt: skip


@gin.register(module="metax.data")
def tiered_imagenet(
    mode: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    image_size: int | Sequence[int] = 84,
    feed: str = "host",
    manual_dir: str | None = None,
    data_dir: str | None = None,
    num_threads: int = 4,
):
    """tiered-ImageNet episodes (351 / 97 / 160 classes of unequal size, 84x84x3) from
    ``manual_dir`` or ``$METAX_TIEREDIMAGENET_DIR``; host-fed by default (the training split
    is ~9.5 GB at 84x84x3)."""
    manual_dir = resolve_dir(
        manual_dir, "METAX_TIEREDIMAGENET_DIR", None, builders.TieredImageNet.FILES
    )
    return episodes(
        builders.TieredImageNet, _sized(image_size, 3), manual_dir, data_dir, mode, ways, shots,
        queries, feed, num_threads=num_threads,
    )  # fmt: skip


def _cifar(variant, mode, ways, shots, queries, image_size, feed, manual_dir, data_dir,
           augmentations, augment_query, num_threads):  # fmt: skip
    manual_dir = resolve_dir(manual_dir, "METAX_CIFAR100_DIR", None, builders.CifarFewShot.FILES)
    config = _sized(image_size, 3, tag=variant, variant=variant)
    return episodes(
        builders.CifarFewShot, config, manual_dir, data_dir, mode, ways, shots, queries, feed,
        augmentations, augment_query, num_threads,
    )  # fmt: skip


@gin.register(module="metax.data")
def cifar_fs(
    mode: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    image_size: int | Sequence[int] = 32,
    feed: str = "device",
    manual_dir: str | None = None,
    data_dir: str | None = None,
    augmentations: Sequence[Augment] = (),
    augment_query: bool = True,
    num_threads: int = 4,
):
    """CIFAR-FS episodes (Bertinetto et al., 2019: 64 / 16 / 20 CIFAR-100 classes of 600
    images, 32x32x3) from the CIFAR-100 archive in ``manual_dir`` or ``$METAX_CIFAR100_DIR``."""
    return _cifar(
        "cifar_fs", mode, ways, shots, queries, image_size, feed, manual_dir, data_dir,
        augmentations, augment_query, num_threads,
    )  # fmt: skip


@gin.register(module="metax.data")
def fc100(
    mode: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    image_size: int | Sequence[int] = 32,
    feed: str = "device",
    manual_dir: str | None = None,
    data_dir: str | None = None,
    augmentations: Sequence[Augment] = (),
    augment_query: bool = True,
    num_threads: int = 4,
):
    """FC100 episodes (Oreshkin et al., 2018: CIFAR-100 split by superclass, 12 / 4 / 4
    superclasses = 60 / 20 / 20 classes, 32x32x3) from the CIFAR-100 archive in
    ``manual_dir`` or ``$METAX_CIFAR100_DIR``."""
    return _cifar(
        "fc100", mode, ways, shots, queries, image_size, feed, manual_dir, data_dir,
        augmentations, augment_query, num_threads,
    )  # fmt: skip


@gin.register(module="metax.data")
def image_folder(
    root: str = gin.REQUIRED,
    classes: Mapping[str, Sequence[str]] = gin.REQUIRED,
    mode: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    image_size: int | Sequence[int] = 84,
    channels: int = 3,
    feed: str = "device",
    data_dir: str | None = None,
    augmentations: Sequence[Augment] = (),
    augment_query: bool = True,
    num_threads: int = 4,
):
    """Episodes of any ``root/<class>/*.{png,jpg,jpeg}``: ``classes`` maps 'train', 'val'
    and 'test' to class folder names (disjoint); images resized to ``image_size`` with
    ``channels`` (1: grey, 3: RGB)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    config = builders.image_folder_config(classes, height, width, channels)
    return episodes(
        builders.ImageFolder, config, os.path.expanduser(root), data_dir, mode, ways, shots,
        queries, feed, augmentations, augment_query, num_threads,
    )  # fmt: skip
