"""Task data: `MetaBatch` of support/query `Dataset`s with a leading task axis, and samplers.

Importing this package registers every sampler with gin and imports neither TensorFlow nor
TFDS (the image datasets' builders load TFDS when a dataset is prepared or read).
"""

from metax.data.augment import color_jitter, horizontal_flip, random_crop
from metax.data.base import Dataset, MetaBatch, TaskSampler, num_tasks, sample_meta_batch
from metax.data.datasets import (
    cifar_fs,
    fc100,
    image_folder,
    mini_imagenet,
    omniglot,
    tiered_imagenet,
)
from metax.data.episodes import Episodes, Feed
from metax.data.fewshot import fewshot
from metax.data.host import HostTaskSampler, Sampler
from metax.data.synthetic import (
    FAMILY_NAMES,
    family,
    harmonic,
    linear,
    polynomial,
    sawtooth,
    sinusoid,
    sinusoid_family,
)

__all__ = [
    "FAMILY_NAMES",
    "Dataset",
    "Episodes",
    "Feed",
    "HostTaskSampler",
    "MetaBatch",
    "Sampler",
    "TaskSampler",
    "cifar_fs",
    "color_jitter",
    "family",
    "fc100",
    "fewshot",
    "harmonic",
    "horizontal_flip",
    "image_folder",
    "linear",
    "mini_imagenet",
    "num_tasks",
    "omniglot",
    "polynomial",
    "random_crop",
    "sample_meta_batch",
    "sawtooth",
    "sinusoid",
    "sinusoid_family",
    "tiered_imagenet",
]
