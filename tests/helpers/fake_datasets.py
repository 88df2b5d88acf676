"""Small fake copies of the few-shot datasets' files, in the layouts their builders read.

Every image encodes its class and index (``pixel = 10 * class + index`` in channel 0 and
the class's position in the split in channel 1), so tests can check which image landed where.
"""

import csv
import io
import os
import tarfile

import numpy as np
from PIL import Image


def fake_image(split_class: int, index: int, size: int = 10) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = (10 * split_class + index) % 256
    image[..., 1] = split_class
    image[..., 2] = 200
    return image


def _save(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def mini_imagenet(root: str, classes=(4, 3, 3), per_class: int = 6) -> str:
    """``root/images/*.png`` and ``{train,val,test}.csv`` (ids like n0000000X)."""
    wnid = 0
    for split, count in zip(("train", "val", "test"), classes, strict=False):
        with open(os.path.join(_mkdir(root), f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for c in range(count):
                label = f"n{wnid:08d}"
                wnid += 1
                for i in range(per_class):
                    name = f"{label}{i:08d}.png"
                    _save(os.path.join(root, "images", name), fake_image(c, i))
                    writer.writerow([name, label])
    return root


def tiered_imagenet(root: str, counts=((5, 7, 6), (6, 6, 8), (9, 6, 6))) -> str:
    """``root/{train,val,test}/<class>/*.jpg``-style folders (png here) of unequal classes."""
    for split, sizes in zip(("train", "val", "test"), counts, strict=False):
        for c, n in enumerate(sizes):
            for i in range(n):
                _save(os.path.join(root, split, f"class{c:02d}", f"{i:03d}.png"), fake_image(c, i))
    return root


def image_folder(root: str, num_classes: int = 6, per_class: int = 5) -> str:
    for c in range(num_classes):
        for i in range(per_class):
            _save(os.path.join(root, f"c{c}", f"{i}.png"), fake_image(c, i))
    return root


def cifar100(root: str, per_class_train: int = 5, per_class_test: int = 1, binary=True) -> str:
    """A CIFAR-100 archive with all 100 fine classes (superclass = fine // 5 is not CIFAR's
    real mapping, which the builders read from the file anyway), images encoding
    ``(fine label, index)`` in channels 0 and 1."""
    from metax.data.builders import CIFAR100_CLASSES  # noqa: F401  (100 classes)

    rng = np.random.default_rng(0)
    superclass = rng.permutation(np.repeat(np.arange(20), 5))
    parts = {}
    for part, n in (("train", per_class_train), ("test", per_class_test)):
        fine = np.repeat(np.arange(100), n).astype(np.uint8)
        index = np.tile(np.arange(n), 100) + (per_class_train if part == "test" else 0)
        images = np.zeros((len(fine), 32, 32, 3), np.uint8)
        images[..., 0] = fine[:, None, None]
        images[..., 1] = index[:, None, None]
        parts[part] = (images, fine, superclass[fine].astype(np.uint8))
    name = "cifar-100-binary" if binary else "cifar-100-python"
    path = os.path.join(_mkdir(root), f"{name}.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for part, (images, fine, coarse) in parts.items():
            chw = images.transpose(0, 3, 1, 2).reshape(len(fine), -1)
            if binary:
                payload = np.concatenate([coarse[:, None], fine[:, None], chw], axis=1).tobytes()
            else:
                import pickle

                payload = pickle.dumps(
                    {b"data": chw, b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}
                )
            info = tarfile.TarInfo(f"{name}/{part}" + (".bin" if binary else ""))
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return root, superclass


def _mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
