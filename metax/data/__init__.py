"""Task data: `MetaBatch` of support/query `Dataset`s with a leading task axis, and samplers.

Importing this package does not import TensorFlow.
"""

from metax.data.augment import color_jitter, horizontal_flip, random_crop
from metax.data.base import Dataset, MetaBatch, TaskSampler, num_tasks, sample_meta_batch
from metax.data.fewshot import fewshot
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
    "MetaBatch",
    "TaskSampler",
    "color_jitter",
    "family",
    "fewshot",
    "harmonic",
    "horizontal_flip",
    "linear",
    "num_tasks",
    "polynomial",
    "random_crop",
    "sample_meta_batch",
    "sawtooth",
    "sinusoid",
    "sinusoid_family",
]
