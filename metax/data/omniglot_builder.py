"""Omniglot's TFDS builder: the original zip files prepared offline into array_record files,
read back without TensorFlow (imports TFDS; `metax.data.omniglot` loads it when a split is read).

`OmniglotZips` prepares whichever of the dataset authors' zips sit in its manual folder
(``images_background.zip``, ``images_evaluation.zip``, ``images_background_small1.zip``,
``images_background_small2.zip``; the files TFDS's own ``omniglot`` builder downloads): one
split per zip, images as `metax.data.preprocess.omniglot_image` makes them (one square size,
ink 255 on 0), one example per drawing with its character label (an index into the sorted
``alphabet/character`` names of all zips present) and its alphabet.
"""

import os
import zipfile
import zlib

import numpy as np
import tensorflow_datasets as tfds

from metax.data.builders import ImageConfig
from metax.data.preprocess import OMNIGLOT_SIZE, omniglot_image

ZIP_SPLITS = {
    "images_background.zip": "background",
    "images_evaluation.zip": "evaluation",
    "images_background_small1.zip": "small1",
    "images_background_small2.zip": "small2",
}
DRAWINGS_PER_CHARACTER = 20


class DamagedZipError(ValueError):
    """An Omniglot zip that cannot be read: one line naming it and the fix."""

    def __init__(self, zip_path: str, reason: str):
        super().__init__(
            f"{zip_path} cannot be read ({reason}): it is truncated or damaged. Download it "
            f"again (https://github.com/brendenlake/omniglot/tree/master/python)."
        )


def _characters(zip_path: str) -> list[tuple[str, str, list[str]]]:
    """(alphabet, character, png member names) of one zip, sorted."""
    groups: dict[tuple[str, str], list[str]] = {}
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DamagedZipError(zip_path, str(error) or type(error).__name__) from None
    for name in names:
        parts = name.split("/")
        if len(parts) == 4 and parts[3].endswith(".png"):
            groups.setdefault((parts[1], parts[2]), []).append(name)
    if not groups:
        raise DamagedZipError(zip_path, "it holds no alphabet/character/*.png drawings")
    return [(a, c, sorted(files)) for (a, c), files in sorted(groups.items())]


def _read_png(archive: zipfile.ZipFile, member: str, size: int) -> np.ndarray:
    from PIL import Image

    with archive.open(member) as f:
        return omniglot_image(Image.open(f), size)


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
                    try:
                        image = _read_png(archive, member, self.builder_config.shape[0])
                    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
                        raise DamagedZipError(zip_path, f"{member}: {error}") from None
                    yield (
                        member,
                        {
                            "image": image,
                            "label": np.int32(label[(a, c)]),
                            "alphabet": np.int32(alphabet[a]),
                        },
                    )


def prepare(manual_dir: str, data_dir: str, image_size: int = OMNIGLOT_SIZE) -> OmniglotZips:
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
    source, split: str = "", image_size: int = OMNIGLOT_SIZE
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
        return x if x.shape == (image_size, image_size, 1) else omniglot_image(x, image_size)

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
