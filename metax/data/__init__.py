"""Task data: `MetaBatch` of support/query `Dataset`s with a leading task axis, and samplers.

Importing this package does not import TensorFlow.
"""

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
    "family",
    "fewshot",
    "harmonic",
    "linear",
    "num_tasks",
    "polynomial",
    "sample_meta_batch",
    "sawtooth",
    "sinusoid",
    "sinusoid_family",
]
