"""Pictures of what a model is fed: image grids of few-shot episodes (for TensorBoard)."""

import numpy as np

from metax.data.base import MetaBatch

_PAD = 2
_SCALE = 2
_LABEL_WIDTH = 28
_HEADER_HEIGHT = 14


def is_image_episode(episode: MetaBatch) -> bool:
    """Whether a single task's support inputs are images ``(n, h, w, c)`` with 1 or 3 channels
    and integer class labels ``(n,)``."""
    x, y = episode.train.x, episode.train.y
    return (
        np.ndim(x) == 4
        and x.shape[-1] in (1, 3)
        and np.ndim(y) == 1
        and np.issubdtype(np.asarray(y).dtype, np.integer)
    )


def episode_grid(episode: MetaBatch) -> np.ndarray:
    """One task's episode as an ``(H, W, 3)`` uint8 image: a row per label (written at its
    left), its support images, a gap, then its query images (images in [0, 1])."""
    from PIL import Image, ImageDraw

    support_x, support_y = np.asarray(episode.train.x), np.asarray(episode.train.y)
    query_x, query_y = np.asarray(episode.test.x), np.asarray(episode.test.y)
    labels = np.unique(np.concatenate([support_y, query_y]))
    h, w = support_x.shape[1:3]
    cell_h, cell_w = h * _SCALE + _PAD, w * _SCALE + _PAD
    shots = max(int(np.sum(support_y == label)) for label in labels)
    queries = max(int(np.sum(query_y == label)) for label in labels)
    query_left = _LABEL_WIDTH + shots * cell_w + 3 * _PAD
    canvas = Image.new(
        "RGB",
        (query_left + queries * cell_w, _HEADER_HEIGHT + len(labels) * cell_h),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((_LABEL_WIDTH, 1), "support", fill=(0, 0, 160))
    draw.text((query_left, 1), "query", fill=(160, 0, 0))

    def tile(image):
        pixels = np.clip(np.asarray(image, np.float32) * 255, 0, 255).astype(np.uint8)
        pixels = np.broadcast_to(pixels, (h, w, 3)) if pixels.shape[-1] == 1 else pixels
        return Image.fromarray(np.ascontiguousarray(pixels)).resize((w * _SCALE, h * _SCALE))

    for row, label in enumerate(labels):
        top = _HEADER_HEIGHT + row * cell_h
        draw.text((2, top + cell_h // 2 - 6), str(int(label)), fill=(0, 0, 0))
        for left, images in (
            (_LABEL_WIDTH, support_x[support_y == label]),
            (query_left, query_x[query_y == label]),
        ):
            for column, image in enumerate(images):
                canvas.paste(tile(image), (left + column * cell_w, top))
    return np.asarray(canvas)
