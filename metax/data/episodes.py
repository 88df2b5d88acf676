"""The settings of few-shot episodes, as validated values every image sampler takes:
`Episodes` (how an N-way K-shot episode is drawn) and `Feed` (where episodes are built)."""

import dataclasses
from collections.abc import Sequence

import gin

from metax.data.augment import Augment

FEEDS = ("device", "host")


def _positive(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be an integer >= 1, got {value!r}.")


@gin.configurable(module="metax.data")
@dataclasses.dataclass(frozen=True)
class Episodes:
    """How an N-way K-shot episode is drawn (the same for every image dataset).

    Attributes:
      ways: classes per episode (labels ``0 .. ways - 1``, permuted per episode).
      shots: support images per class.
      queries: query images per class.
      augmentations: per-image transforms (`metax.data.augment`: e.g.
        ``(random_crop(4), horizontal_flip())``), applied in order inside the on-device
        sampler; none by default.
      augment_query: whether the augmentations apply to query images too (else support only).
    """

    ways: int = 5
    shots: int = 1
    queries: int = 15
    augmentations: Sequence[Augment] = ()
    augment_query: bool = True

    def __post_init__(self):
        for name in ("ways", "shots", "queries"):
            _positive("Episodes", name, getattr(self, name))
        object.__setattr__(self, "augmentations", tuple(self.augmentations))
        if not all(callable(a) for a in self.augmentations):
            raise ValueError(
                f"Episodes.augmentations must be augmentations such as "
                f"metax.data.random_crop(4) (in gin @metax.data.random_crop()), got "
                f"{self.augmentations!r}."
            )

    @property
    def per_class(self) -> int:
        """Images drawn from each class: ``shots + queries``."""
        return self.shots + self.queries

    def check_fits(self, num_classes: int, smallest_class: int) -> None:
        """Raises a ValueError unless these episodes can be drawn from ``num_classes`` classes
        of at least ``smallest_class`` images each."""
        if self.ways > num_classes:
            raise ValueError(
                f"Episodes of {self.ways} ways, but the split has only {num_classes} classes."
            )
        if self.per_class > smallest_class:
            raise ValueError(
                f"Episodes of {self.shots} shots + {self.queries} queries per class, but the "
                f"split has only {smallest_class} images per class (in its smallest class)."
            )


@gin.configurable(module="metax.data")
@dataclasses.dataclass(frozen=True)
class Feed:
    """Where an image dataset's episodes are built.

    Attributes:
      on: ``"device"``: the split is one uint8 array on every device and episodes are drawn
        inside the compiled step (`metax.data.fewshot`; fastest where the split fits);
        ``"host"``: episodes are built on the host by random access to the prepared files,
        each process only its share (`metax.data.host`), for splits that do not fit.
      num_threads: host feed only: grain threads building tasks.
      prefetch: host feed only: meta-batches built ahead of the device.
    """

    on: str = "device"
    num_threads: int = 4
    prefetch: int = 2

    def __post_init__(self):
        if self.on not in FEEDS:
            raise ValueError(f"Feed.on must be one of {FEEDS}, got {self.on!r}.")
        _positive("Feed", "num_threads", self.num_threads)
        _positive("Feed", "prefetch", self.prefetch)
