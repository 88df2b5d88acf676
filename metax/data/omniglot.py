"""Omniglot prepared offline from the original zip files, read without TensorFlow.

`OmniglotZips` is a TFDS builder that prepares whichever of the dataset authors' zips sit in
its manual folder (``images_background.zip``, ``images_evaluation.zip``,
``images_background_small1.zip``, ``images_background_small2.zip``; the files TFDS's own
``omniglot`` builder downloads) into array_record files: one split per zip, images resized to
one square size (28x28 by default, as in the MAML paper; 84 or 105, the zips' own size, as
other papers use), one example per drawing with its character label (an index into
the sorted ``alphabet/character`` names of all zips present) and its alphabet. Preparation and
reading need no network and no TensorFlow; `load_classes` returns a split as one array of
classes for `metax.data.fewshot`.
"""

import os
import zipfile
from collections.abc import Sequence

import gin
import numpy as np
import tensorflow_datasets as tfds

from metax.data.augment import Augment
from metax.data.base import TaskSampler
from metax.data.builders import ImageConfig, prepare_once_per_host, prepared_data_dir
from metax.data.fewshot import fewshot

ZIP_SPLITS = {
    "images_background.zip": "background",
    "images_evaluation.zip": "evaluation",
    "images_background_small1.zip": "small1",
    "images_background_small2.zip": "small2",
}
IMAGE_SIZE = 28  # The default; the zips hold 105x105 drawings.
DRAWINGS_PER_CHARACTER = 20
DATA_DIR_ENV = "METAX_OMNIGLOT_DIR"


def _characters(zip_path: str) -> list[tuple[str, str, list[str]]]:
    """(alphabet, character, png member names) of one zip, sorted."""
    groups: dict[tuple[str, str], list[str]] = {}
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[3].endswith(".png"):
                groups.setdefault((parts[1], parts[2]), []).append(name)
    return [(a, c, sorted(files)) for (a, c), files in sorted(groups.items())]


def _resized(image, size: int = IMAGE_SIZE) -> np.ndarray:
    """A PIL image or ``(h, w[, c])`` uint8 array of black ink on white -> ``(size, size, 1)``
    uint8 with ink 255 and background 0."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 else image)
    image = image.convert("L").resize((size, size), Image.LANCZOS)
    return (255 - np.asarray(image, dtype=np.uint8))[:, :, None]


def _read_png(archive: zipfile.ZipFile, member: str, size: int) -> np.ndarray:
    from PIL import Image

    with archive.open(member) as f:
        return _resized(Image.open(f), size)


def image_config(size: int) -> ImageConfig:
    """The builder config of square ``size`` x ``size`` grey images (its own data folder)."""
    return ImageConfig(size, size, 1)


class OmniglotZips(tfds.core.GeneratorBasedBuilder):
    """Omniglot from local copies of the original zips (see the module docstring); its config
    (`image_config`, required) sets the image size."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put any of images_background.zip, images_evaluation.zip, "
        "images_background_small1.zip, images_background_small2.zip (from "
        "https://github.com/brendenlake/omniglot/tree/master/python) in the manual folder."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Omniglot characters prepared from the original zip files.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=self.builder_config.shape, dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "alphabet": tfds.features.Tensor(shape=(), dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        present = {
            split: os.path.join(dl_manager.manual_dir, name)
            for name, split in ZIP_SPLITS.items()
            if os.path.exists(os.path.join(dl_manager.manual_dir, name))
        }
        if not present:
            raise FileNotFoundError(
                f"No Omniglot zip in {dl_manager.manual_dir}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        listing = {split: _characters(path) for split, path in present.items()}
        names = sorted({(a, c) for chars in listing.values() for a, c, _ in chars})
        alphabets = sorted({a for a, _ in names})
        label = {name: i for i, name in enumerate(names)}
        alphabet = {a: i for i, a in enumerate(alphabets)}
        return {
            split: self._generate_examples(present[split], listing[split], label, alphabet)
            for split in present
        }

    def _generate_examples(self, zip_path, characters, label, alphabet):
        with zipfile.ZipFile(zip_path) as archive:
            for a, c, files in characters:
                for member in files:
                    yield (
                        member,
                        {
                            "image": _read_png(archive, member, self.builder_config.shape[0]),
                            "label": np.int32(label[(a, c)]),
                            "alphabet": np.int32(alphabet[a]),
                        },
                    )


def prepare(manual_dir: str, data_dir: str, image_size: int = IMAGE_SIZE) -> OmniglotZips:
    """Prepares (once per image size) the splits of the zips in ``manual_dir`` under
    ``data_dir``, as ``image_size`` x ``image_size`` images."""
    present = [n for n in ZIP_SPLITS if os.path.exists(os.path.join(manual_dir, n))]
    if not present:
        # Checked here: TFDS would fail with a bare AssertionError, never with a download.
        raise FileNotFoundError(
            f"No Omniglot zip in {manual_dir!r}. {OmniglotZips.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    builder = OmniglotZips(
        data_dir=data_dir, config=image_config(image_size), file_format="array_record"
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def classes_from_examples(
    source, split: str = "", image_size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Groups a random-access sequence of examples (dicts with ``image``, ``label``,
    ``alphabet``; black ink on white of any size, or ink-on-black uint8 already of
    ``(image_size, image_size, 1)``) into ``(classes, 20, image_size, image_size, 1)`` uint8
    images (ink 255; `metax.data.fewshot` scales them), classes in label order, and the
    ``(classes,)`` alphabet index of each class."""
    examples = [source[i] for i in range(len(source))]
    labels = np.array([int(e["label"]) for e in examples])
    order = np.argsort(labels, kind="stable")
    classes, counts = np.unique(labels, return_counts=True)
    if not np.all(counts == DRAWINGS_PER_CHARACTER):
        raise ValueError(
            f"Omniglot split {split!r} has characters with {sorted(set(counts))} drawings; "
            f"expected {DRAWINGS_PER_CHARACTER} each."
        )

    def image(e):
        x = np.asarray(e["image"], dtype=np.uint8)
        return x if x.shape == (image_size, image_size, 1) else _resized(x, image_size)

    images = np.stack([image(examples[i]) for i in order])
    alphabets = np.array(
        [int(examples[order[i * DRAWINGS_PER_CHARACTER]]["alphabet"]) for i in range(len(classes))]
    )
    return images.reshape(len(classes), DRAWINGS_PER_CHARACTER, *images.shape[1:]), alphabets


def load_classes(builder: OmniglotZips, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split of `OmniglotZips` as ``(classes, 20, size, size, 1)`` uint8 images (the
    builder config's size) and the alphabet of each class (see `classes_from_examples`)."""
    if split not in builder.info.splits:
        raise ValueError(
            f"Split {split!r} is not prepared; prepared: {sorted(builder.info.splits)}."
        )
    size = builder.builder_config.shape[0]
    return classes_from_examples(builder.as_data_source(split=split), split, size)


# Names of the zips' splits in TFDS's standard ``omniglot`` builder.
STANDARD_TFDS_SPLITS = {
    "background": "train",
    "evaluation": "test",
    "small1": "small1",
    "small2": "small2",
}


STANDARD_TRAIN_CHARACTERS = 1200


def _default(path: str | None, env: str, fallback: str | None) -> str:
    path = path or os.environ.get(env) or fallback
    if path is None:
        raise FileNotFoundError(
            f"Omniglot needs the folder of its original zip files: pass manual_dir (gin: "
            f"metax.data.omniglot.manual_dir) or set {env}. "
            f"{OmniglotZips.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    return os.path.expanduser(path)


def _split_loader(source: str, manual_dir: str | None, data_dir: str | None, image_size: int):
    """``split -> (classes, alphabets)`` for the zips' split names, from either source."""
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"omniglot image_size must be a positive int, got {image_size!r}.")
    data_dir = prepared_data_dir(data_dir)
    if source == "zips":
        manual_dir = _default(manual_dir, DATA_DIR_ENV, None)
        builder = prepare_once_per_host(lambda: prepare(manual_dir, data_dir, image_size))
        return lambda split: load_classes(builder, split)
    if source == "tfds":

        def load(split):
            data = prepare_once_per_host(
                lambda: tfds.data_source(
                    "omniglot",
                    split=STANDARD_TFDS_SPLITS[split],
                    data_dir=data_dir,
                    builder_kwargs={"file_format": "array_record"},
                )
            )
            return classes_from_examples(data, split, image_size)

        return load
    raise ValueError(f"omniglot source must be 'zips' or 'tfds', got {source!r}.")


SPLITS = ("standard", "standard_val", "minimal", "minimal_val")
STANDARD_VAL_CHARACTERS = 100


def omniglot_classes_and_alphabets(
    mode: str,
    splits: str,
    source: str = "zips",
    manual_dir: str | None = None,
    data_dir: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """The classes of the meta-train (``mode="train"``), meta-validation (``"val"``) or
    meta-test (``"test"``) set, as ``(classes, 20, image_size, image_size, 1)`` uint8 images,
    and each class's alphabet index ``(classes,)``.

    ``splits="standard"``: background + evaluation (1,623 characters, background's first, each
    in label order), the first 1,200 for meta-training and the rest for meta-testing
    (Vinyals et al., 2016). ``"standard_val"``: the same with the last 100 of those 1,200 as
    meta-validation (1,100 / 100 / 423). ``splits="minimal"``: meta-train on all characters of
    ``small1`` (5 alphabets), meta-test on the characters of ``small2``'s alphabets that are
    not in ``small1`` (3 alphabets). ``"minimal_val"``: the same meta-test set, and small1's
    alphabet that small2 lacks with the fewest characters (Early_Aramaic, 22) as
    meta-validation, the other 4 for meta-training. Only the ``*_val`` splits have ``"val"``
    classes, and their ``"train"`` classes exclude them (no leak between the sets).

    ``source="zips"``: prepared offline by `OmniglotZips` from the zips in ``manual_dir``.
    ``source="tfds"``: TFDS's standard ``omniglot`` builder, which downloads the same zips
    (online machines; preparing it needs TensorFlow, reading it does not).
    """
    if mode not in ("train", "val", "test") or splits not in SPLITS:
        raise ValueError(
            f"omniglot mode must be 'train', 'val' or 'test' and splits one of {SPLITS}, got "
            f"{mode!r} and {splits!r}."
        )
    validation = splits.endswith("_val")
    if mode == "val" and not validation:
        raise ValueError(
            f"omniglot splits={splits!r} has no meta-validation classes; use "
            f"splits='{splits}_val' for train, val and test samplers alike."
        )
    load = _split_loader(source, manual_dir, data_dir, image_size)
    if splits.startswith("minimal"):
        small1, alphabets1 = load("small1")
        small2, alphabets2 = load("small2")
        if mode == "test":
            unseen = ~np.isin(alphabets2, alphabets1)
            return small2[unseen], alphabets2[unseen]
        if not validation:
            return small1, alphabets1
        candidates, counts = np.unique(
            alphabets1[~np.isin(alphabets1, alphabets2)], return_counts=True
        )
        held_out = alphabets1 == candidates[np.argmin(counts)]
        keep = held_out if mode == "val" else ~held_out
        return small1[keep], alphabets1[keep]
    parts = [load(s) for s in ("background", "evaluation")]
    images = np.concatenate([p[0] for p in parts])
    alphabets = np.concatenate([p[1] for p in parts])
    n_val = STANDARD_VAL_CHARACTERS if validation else 0
    ranges = {
        "train": slice(0, STANDARD_TRAIN_CHARACTERS - n_val),
        "val": slice(STANDARD_TRAIN_CHARACTERS - n_val, STANDARD_TRAIN_CHARACTERS),
        "test": slice(STANDARD_TRAIN_CHARACTERS, None),
    }
    return images[ranges[mode]], alphabets[ranges[mode]]


def omniglot_classes(
    mode: str,
    splits: str,
    source: str = "zips",
    manual_dir: str | None = None,
    data_dir: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> np.ndarray:
    """The images of `omniglot_classes_and_alphabets`: ``(classes, 20, size, size, 1)`` uint8."""
    return omniglot_classes_and_alphabets(mode, splits, source, manual_dir, data_dir, image_size)[0]


@gin.register(module="metax.data")
def omniglot(
    mode: str = "train",
    splits: str = "standard",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    rotations: bool = True,
    source: str = "zips",
    manual_dir: str | None = None,
    data_dir: str | None = None,
    augmentations: Sequence[Augment] = (),
    within_alphabet: bool = False,
    image_size: int = IMAGE_SIZE,
) -> TaskSampler:
    """N-way K-shot Omniglot episodes (``image_size`` square, 28 by default; rotations as extra
    classes as in the MAML paper) sampled on device; see `omniglot_classes` for the splits
    and sources. By default the dataset is prepared once per image size, offline, from the
    zips in ``manual_dir`` (or ``$METAX_OMNIGLOT_DIR``) into ``data_dir`` (or
    ``$METAX_TFDS_DIR``, ``$TFDS_DATA_DIR``, default ``~/tensorflow_datasets``); nothing is
    downloaded unless ``source="tfds"``. Every host loads the whole split (any task may draw
    any class) and samples only its own tasks.
    ``augmentations``: per-image transforms (`metax.data.fewshot`); none by default, the
    rotations-as-classes are Omniglot's usual augmentation. ``within_alphabet=True``: every
    episode's classes come from one alphabet (the harder protocol of Lake et al.)."""
    classes, alphabets = omniglot_classes_and_alphabets(
        mode, splits, source, manual_dir, data_dir, image_size
    )
    return fewshot(
        classes,
        ways=ways,
        shots=shots,
        queries=queries,
        rotations=rotations,
        augmentations=augmentations,
        groups=alphabets if within_alphabet else None,
    )
