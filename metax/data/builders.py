"""Offline TFDS builders for few-shot image datasets, prepared from the files users have.

Each builder reads local files from its manual folder (nothing is downloaded), resizes every
image to the config's ``(height, width, channels)`` (`metax.data.preprocess.resize_image`) and
writes one split per class set
(``train``, ``val``, ``test``) as array_record files, read back without TensorFlow by
`tfds.data_source`. Examples are written class by class (shuffling disabled), and the split's
class names and per-class counts are stored in the dataset's metadata, so class ``c`` is the
contiguous index range ``offsets[c]:offsets[c + 1]`` of the split's data source: episodes need
no pass over the data to find a class.

- `MiniImageNet`: ``images/*.jpg`` plus Ravi & Larochelle's ``train.csv``, ``val.csv``,
  ``test.csv`` (``filename,label``): 64 / 16 / 20 classes of 600 images.
- `TieredImageNet`: ``train/<class>/*``, ``val/<class>/*``, ``test/<class>/*`` image folders:
  351 / 97 / 160 classes (Ren et al., 2018).
- `CifarFewShot`: CIFAR-FS (Bertinetto et al., 2019; 64 / 16 / 20 classes) or FC100
  (Oreshkin et al., 2018; 12 / 4 / 4 superclasses = 60 / 20 / 20 classes) from the CIFAR-100
  archive TFDS's ``cifar100`` builder reads (``cifar-100-binary.tar.gz``) or its Python
  version (``cifar-100-python.tar.gz``); all 600 images of each class (train and test parts).
- `ImageFolder`: any ``root/<class>/*.{png,jpg,jpeg}`` with a class split given by the user.
"""

import csv
import hashlib
import json
import os
import pickle
import tarfile
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from metax.data.preprocess import resize_image
from metax.data.storage import SPLIT_NAMES

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# A class: its name and one zero-argument reader per image (returns a PIL image or an array).
ImageReader = Callable[[], object]
ClassFiles = list[tuple[str, list[ImageReader]]]


class ImageConfig(tfds.core.BuilderConfig):
    """Image shape of a prepared dataset; its name (e.g. ``84x84x3``) names the data folder."""

    def __init__(self, height: int, width: int, channels: int, tag: str = "", **settings):
        if height < 1 or width < 1 or channels not in (1, 3):
            raise ValueError(
                f"Image size must be positive and channels 1 or 3, got {height}x{width}x{channels}."
            )
        name = f"{tag + '_' if tag else ''}{height}x{width}x{channels}"
        super().__init__(name=name, version="1.0.0")
        self.shape = (height, width, channels)
        self.settings = settings


def _file_reader(path: str) -> ImageReader:
    def read():
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image.load()
                return image
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(
                f"The image {path} cannot be read ({error}): it is damaged or not an image. "
                f"Replace it, or remove it from the class folder."
            ) from None

    return read


def _images_in(folder: str) -> list[str]:
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
    )


class FewShotImageBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the builders above: subclasses list the classes of each split
    (`class_files`) and say which files they need (`FILES`)."""

    VERSION = tfds.core.Version("1.0.0")
    FILES = ""  # What to put in the manual folder (for error messages).

    @property
    def MANUAL_DOWNLOAD_INSTRUCTIONS(self) -> str:  # noqa: N802 (TFDS's name)
        return self.FILES

    def class_files(self, manual_dir: str) -> dict[str, ClassFiles]:
        """``split -> [(class name, [reader per image])]`` from the files in ``manual_dir``."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=self.builder_config.shape, dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int32),
                }
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        listing = self.class_files(os.fspath(dl_manager.manual_dir))
        for split, classes in listing.items():
            if not classes:
                raise ValueError(f"{type(self).__name__}: split {split!r} has no classes.")
            empty = [name for name, images in classes if not images]
            if empty:
                raise ValueError(
                    f"{type(self).__name__}: classes without images in split {split!r}: "
                    f"{empty[:5]}."
                )
            self.info.metadata[split] = {
                "classes": [name for name, _ in classes],
                "counts": [len(images) for _, images in classes],
            }
        return {split: self._generate_examples(classes) for split, classes in listing.items()}

    def _generate_examples(self, classes: ClassFiles):
        shape = self.builder_config.shape
        for label, (_, readers) in enumerate(classes):
            for i, read in enumerate(readers):
                # Keys sort in generation order: class by class.
                yield f"{label:06d}_{i:07d}", {"image": resize_image(read(), shape), "label": label}


def _missing(builder: type[FewShotImageBuilder], manual_dir: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{builder.__name__}: {what} in {manual_dir!r}. {builder.FILES}")


class MiniImageNet(FewShotImageBuilder):
    """mini-ImageNet in Ravi & Larochelle's split (64 / 16 / 20 classes of 600 images)."""

    FILES = (
        "mini-ImageNet needs, in one folder: images/ (the 60,000 images, e.g. "
        "n0153282900000005.jpg) and Ravi & Larochelle's split files train.csv, val.csv and "
        "test.csv (header 'filename,label'). Pass it as manual_dir or set "
        "$METAX_MINIIMAGENET_DIR."
    )

    def class_files(self, manual_dir):
        images = os.path.join(manual_dir, "images")
        if not os.path.isdir(images):
            raise _missing(type(self), manual_dir, "no images/ folder")
        listing = {}
        for split in SPLIT_NAMES:
            path = os.path.join(manual_dir, f"{split}.csv")
            if not os.path.exists(path):
                raise _missing(type(self), manual_dir, f"no {split}.csv")
            by_class: dict[str, list[str]] = {}
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    by_class.setdefault(row["label"], []).append(row["filename"])
            for files in by_class.values():
                for name in files:
                    if not os.path.exists(os.path.join(images, name)):
                        raise _missing(
                            type(self), manual_dir, f"{split}.csv lists images/{name}, absent"
                        )
            listing[split] = [
                (label, [_file_reader(os.path.join(images, n)) for n in sorted(files)])
                for label, files in sorted(by_class.items())
            ]
        return listing


TIERED_CLASSES = {"train": 351, "val": 97, "test": 160}


class TieredImageNet(FewShotImageBuilder):
    """tiered-ImageNet (Ren et al., 2018): 351 / 97 / 160 classes of 34 / 8 / 8 superclasses."""

    FILES = (
        "tiered-ImageNet needs, in one folder, the image folders train/<class>/*.jpg, "
        "val/<class>/*.jpg and test/<class>/*.jpg (351 / 97 / 160 classes; png also read). "
        "Pass it as manual_dir or set $METAX_TIEREDIMAGENET_DIR."
    )

    def class_files(self, manual_dir):
        listing = {}
        for split in SPLIT_NAMES:
            folder = os.path.join(manual_dir, split)
            if not os.path.isdir(folder):
                raise _missing(type(self), manual_dir, f"no {split}/ folder")
            classes = sorted(
                c for c in os.listdir(folder) if os.path.isdir(os.path.join(folder, c))
            )
            if len(classes) != TIERED_CLASSES[split]:
                logging.warning(
                    "tiered-ImageNet %s/ has %d classes, the standard split has %d.",
                    split,
                    len(classes),
                    TIERED_CLASSES[split],
                )
            listing[split] = [
                (c, [_file_reader(p) for p in _images_in(os.path.join(folder, c))]) for c in classes
            ]
        return listing


class ImageFolder(FewShotImageBuilder):
    """Any ``root/<class>/*.{png,jpg,jpeg}`` with a user-given class split (config setting
    ``classes``: split name -> class folder names)."""

    FILES = (
        "An image folder needs root/<class>/*.png (or .jpg) with one folder per class named in "
        "the class split. Pass root as manual_dir."
    )

    def class_files(self, manual_dir):
        listing = {}
        for split, names in self.builder_config.settings["classes"].items():
            missing = [c for c in names if not os.path.isdir(os.path.join(manual_dir, c))]
            if missing:
                raise _missing(type(self), manual_dir, f"no class folder {missing[:5]}")
            listing[split] = [
                (c, [_file_reader(p) for p in _images_in(os.path.join(manual_dir, c))])
                for c in names
            ]
        return listing


def image_folder_config(
    classes: Mapping[str, Sequence[str]], height: int, width: int, channels: int
) -> ImageConfig:
    """The `ImageFolder` config of a class split; its name carries a hash of the split, so two
    splits of one folder are prepared apart."""
    classes = {split: list(names) for split, names in classes.items()}
    overlap = [
        (a, b, sorted(set(classes[a]) & set(classes[b])))
        for i, a in enumerate(classes)
        for b in list(classes)[i + 1 :]
        if set(classes[a]) & set(classes[b])
    ]
    if overlap:
        a, b, common = overlap[0]
        raise ValueError(f"Image folder splits {a!r} and {b!r} share classes {common[:5]}.")
    digest = hashlib.sha1(json.dumps(classes, sort_keys=True).encode()).hexdigest()[:10]
    return ImageConfig(height, width, channels, tag=f"split{digest}", classes=classes)


# CIFAR-100's fine labels (TFDS's cifar100 label order) and superclasses.
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach "
    "couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster "
    "house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree "
    "motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
    "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket "
    "rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip "
    "turtle wardrobe whale willow_tree wolf woman worm".split()
)
CIFAR100_SUPERCLASSES = tuple(
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables "
    "household_electrical_devices household_furniture insects large_carnivores "
    "large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores "
    "medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 "
    "vehicles_2".split()
)
# Bertinetto et al. (2019): val and test classes; train is the other 64.
CIFAR_FS_CLASSES = {
    "val": tuple(
        "beaver otter flatfish shark lamp television beetle butterfly sea camel cattle crab "
        "crocodile maple_tree motorcycle tractor".split()
    ),
    "test": tuple(
        "whale poppy rose sweet_pepper telephone bed table wardrobe leopard plain chimpanzee "
        "fox snail worm baby man woman bicycle pickup_truck rocket".split()
    ),
}
# Oreshkin et al. (2018): superclass indices of val and test; train is the other 12.
FC100_SUPERCLASSES = {"val": (8, 11, 13, 16), "test": (0, 7, 12, 14)}
CIFAR100_ARCHIVES = ("cifar-100-binary.tar.gz", "cifar-100-python.tar.gz")


def read_cifar100(manual_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 60,000 CIFAR-100 images ``(n, 32, 32, 3)`` uint8 with fine and coarse labels, from
    the binary or Python archive in ``manual_dir`` (train part first)."""
    for archive in CIFAR100_ARCHIVES:
        path = os.path.join(manual_dir, archive)
        if os.path.exists(path):
            break
    else:
        raise _missing(CifarFewShot, manual_dir, f"none of {list(CIFAR100_ARCHIVES)}")
    images, fine, coarse = [], [], []
    try:
        tar = tarfile.open(path)  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(
            f"{path} cannot be read ({error}): it is truncated or damaged. Download it again "
            f"(https://www.cs.toronto.edu/~kriz/cifar.html)."
        ) from None
    with tar:

        def member(name: str):
            found = tar.extractfile(name)
            if found is None:
                raise _missing(CifarFewShot, manual_dir, f"{archive} without {name}")
            return found

        for part in ("train", "test"):
            if archive.startswith("cifar-100-binary"):
                raw = member(f"cifar-100-binary/{part}.bin").read()
                records = np.frombuffer(raw, np.uint8).reshape(-1, 2 + 3072)
                coarse.append(records[:, 0])
                fine.append(records[:, 1])
                pixels = records[:, 2:]
            else:
                data = pickle.load(member(f"cifar-100-python/{part}"), encoding="bytes")
                pixels = np.asarray(data[b"data"], np.uint8)
                fine.append(np.asarray(data[b"fine_labels"]))
                coarse.append(np.asarray(data[b"coarse_labels"]))
            images.append(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(fine), np.concatenate(coarse)


def cifar_class_split(variant: str, fine: np.ndarray, coarse: np.ndarray) -> dict[str, list[int]]:
    """Fine label ids of each split of ``variant`` ('cifar_fs' or 'fc100')."""
    if variant == "cifar_fs":
        held_out = {
            s: [CIFAR100_CLASSES.index(c) for c in names] for s, names in CIFAR_FS_CLASSES.items()
        }
    elif variant == "fc100":
        superclass_of = {int(f): int(c) for f, c in zip(fine, coarse, strict=False)}
        held_out = {
            s: sorted(f for f, c in superclass_of.items() if c in supers)
            for s, supers in FC100_SUPERCLASSES.items()
        }
    else:
        raise ValueError(f"CIFAR few-shot variant must be 'cifar_fs' or 'fc100', got {variant!r}.")
    taken = set(held_out["val"]) | set(held_out["test"])
    return {"train": [c for c in range(100) if c not in taken], **held_out}


class CifarFewShot(FewShotImageBuilder):
    """CIFAR-FS or FC100 (config setting ``variant``) from the CIFAR-100 archive."""

    FILES = (
        "CIFAR-FS and FC100 need CIFAR-100: cifar-100-binary.tar.gz (the file TFDS's cifar100 "
        "builder downloads, under <tfds data dir>/downloads) or cifar-100-python.tar.gz, from "
        "https://www.cs.toronto.edu/~kriz/cifar.html. Pass its folder as manual_dir or set "
        "$METAX_CIFAR100_DIR."
    )

    def class_files(self, manual_dir):
        images, fine, coarse = read_cifar100(manual_dir)
        split = cifar_class_split(self.builder_config.settings["variant"], fine, coarse)
        return {
            name: [
                (CIFAR100_CLASSES[c], [lambda i=i: images[i] for i in np.flatnonzero(fine == c)])
                for c in ids
            ]
            for name, ids in split.items()
        }


def prepare(
    builder_class: type[FewShotImageBuilder], config: ImageConfig, manual_dir: str, data_dir: str
):
    """Prepares (once, offline) ``builder_class`` with ``config`` from the files in
    ``manual_dir`` into ``data_dir``; returns the builder."""
    builder = builder_class(data_dir=data_dir, config=config, file_format="array_record")
    if not builder.is_prepared():
        if not os.path.isdir(manual_dir):
            raise _missing(builder_class, manual_dir, "no such folder")
        logging.info(
            "Preparing %s (%s) from %s into %s.",
            builder_class.__name__,
            config.name,
            manual_dir,
            data_dir,
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    return builder


class SplitSource:
    """One prepared split read by random access: ``source[i]`` is example ``i`` (a dict with
    ``image (h, w, c)`` uint8 and ``label``); class ``c`` holds examples
    ``offsets[c]:offsets[c + 1]``; ``names`` are the classes' names."""

    def __init__(self, builder: FewShotImageBuilder, split: str):
        if split not in builder.info.splits:
            raise ValueError(
                f"Split {split!r} of {builder.name} is not prepared; prepared: "
                f"{sorted(builder.info.splits)}."
            )
        meta = builder.info.metadata[split]
        self.source = builder.as_data_source(split=split)
        self.names = list(meta["classes"])
        self.counts = np.asarray(meta["counts"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.image_shape = tuple(builder.builder_config.shape)

    def images(self, indices: np.ndarray) -> np.ndarray:
        """Examples ``indices`` (any shape) as ``(*indices.shape, h, w, c)`` uint8."""
        flat = np.asarray(indices).reshape(-1).tolist()
        examples = self.source.__getitems__(flat)
        return np.stack([e["image"] for e in examples]).reshape(
            *np.shape(indices), *self.image_shape
        )

    def class_arrays(self) -> np.ndarray:
        """The split as one dense ``(classes, examples_per_class, h, w, c)`` uint8 array (for
        the on-device sampler); needs the same number of images in every class."""
        if np.any(self.counts != self.counts[0]):
            raise ValueError(
                f"The classes of this split have {self.counts.min()} to {self.counts.max()} "
                f"images; the on-device sampler needs equal classes. Use "
                f"Feed(on='host') (gin: metax.data.Feed.on = 'host')."
            )
        indices = np.arange(self.offsets[-1]).reshape(len(self.counts), -1)
        return self.images(indices)
