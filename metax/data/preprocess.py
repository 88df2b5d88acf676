"""The preprocessing the image datasets' loaders apply, public so that a user's own images can
be fed to a trained model exactly as training images were (bit for bit).

Preparing a dataset stores each image as uint8 of the configured shape (`resize_image`; for
Omniglot `omniglot_image`, which also turns black ink on white into ink 255 on 0); the
samplers then scale uint8 to float32 in [0, 1] (`scale`). So for a model trained on a dataset
prepared at ``(h, w, c)``:

    x = scale(np.stack([resize_image(Image.open(f), (h, w, c)) for f in files]))
"""

import numpy as np

OMNIGLOT_SIZE = 28  # metax's default Omniglot image side (the zips hold 105 x 105 drawings).


def resize_image(image, shape: tuple[int, int, int]) -> np.ndarray:
    """A PIL image or ``(h, w[, c])`` uint8 array -> ``shape`` ``(height, width, channels)``
    uint8: converted to RGB (3 channels) or grey (1), resized with Lanczos filtering unless it
    has that size already. What every image dataset's builder stores."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    height, width, channels = shape
    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array if channels == 3 else array[:, :, None]


def omniglot_image(image, size: int = OMNIGLOT_SIZE) -> np.ndarray:
    """An Omniglot drawing (a PIL image or ``(h, w[, c])`` uint8 array, black ink on white)
    -> ``(size, size, 1)`` uint8 with ink 255 and background 0, as `metax.data.omniglot`
    stores it: grey, Lanczos-resized, inverted."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 else image)
    image = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
    return (255 - np.asarray(image, dtype=np.uint8))[:, :, None]


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1] (``x / 255``), as the samplers feed them to models;
    other arrays are returned as they are."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        return images
    return images.astype(np.float32) / np.float32(255.0)
