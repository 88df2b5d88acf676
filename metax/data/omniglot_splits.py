"""Omniglot's meta-training, meta-validation and meta-test class splits (`metax.data.omniglot`
samples episodes from them).

The data is prepared once, offline, from the original zip files
(`metax.data.omniglot_builder.OmniglotZips`: no network and no TensorFlow, for preparing or
reading) at one square size (28x28 by default, as in the MAML paper; 84 or 105, the zips' own
size, as other papers use), or read from TFDS's standard ``omniglot`` builder.
"""

import numpy as np

from metax.data.preprocess import OMNIGLOT_SIZE
from metax.data.storage import prepare_once_per_host, prepared_data_dir, source_dir

DATA_DIR_ENV = "METAX_OMNIGLOT_DIR"
ZIPS_NEEDED = (
    "Omniglot needs the folder of its original zip files (any of images_background.zip, "
    "images_evaluation.zip, images_background_small1.zip, images_background_small2.zip, from "
    "https://github.com/brendenlake/omniglot/tree/master/python): pass manual_dir (gin: "
    "metax.data.omniglot.manual_dir) or set $METAX_OMNIGLOT_DIR"
)

# Names of the zips' splits in TFDS's standard ``omniglot`` builder.
STANDARD_TFDS_SPLITS = {
    "background": "train",
    "evaluation": "test",
    "small1": "small1",
    "small2": "small2",
}


STANDARD_TRAIN_CHARACTERS = 1200


def _split_loader(source: str, manual_dir: str | None, data_dir: str | None, image_size: int):
    """``split -> (classes, alphabets)`` for the zips' split names, from either source."""
    from metax.data import omniglot_builder  # TFDS: only when a split is read.

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"omniglot image_size must be a positive int, got {image_size!r}.")
    data_dir = prepared_data_dir(data_dir)
    if source == "zips":
        manual_dir = source_dir(manual_dir, DATA_DIR_ENV, ZIPS_NEEDED)
        builder = prepare_once_per_host(
            lambda: omniglot_builder.prepare(manual_dir, data_dir, image_size)
        )
        return lambda split: omniglot_builder.load_classes(builder, split)
    if source == "tfds":
        import tensorflow_datasets as tfds

        def load(split):
            data = prepare_once_per_host(
                lambda: tfds.data_source(
                    "omniglot",
                    split=STANDARD_TFDS_SPLITS[split],
                    data_dir=data_dir,
                    builder_kwargs={"file_format": "array_record"},
                )
            )
            return omniglot_builder.classes_from_examples(data, split, image_size)

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
    image_size: int = OMNIGLOT_SIZE,
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

    ``source="zips"``: prepared offline by `metax.data.omniglot_builder.OmniglotZips` from
    the zips in ``manual_dir``.
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
