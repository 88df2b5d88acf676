"""Image augmentations as pure, keyed per-image transforms, applied inside the episode sampler.

An `Augment` is ``augment(rng, image) -> image`` for one image ``(h, w, c)`` with values in
[0, 1] (shape and dtype kept); every random draw comes from ``rng``. `metax.data.fewshot`
applies a sequence of them to every image of an episode with its own key, inside jit.
"""

from collections.abc import Callable, Sequence

import gin
import jax
import jax.numpy as jnp

from metax.types import Array, PRNGKey
from metax.validate import check_int, check_number

Augment = Callable[[PRNGKey, Array], Array]


@gin.register(module="metax.data")
def random_crop(padding: int = 4) -> Augment:
    """Pads with ``padding`` zero pixels on every side, then crops a random window of the
    original size (the standard CIFAR / mini-ImageNet augmentation)."""
    check_int("random_crop padding", padding, 0)

    def augment(rng: PRNGKey, image: Array) -> Array:
        h, w, _ = image.shape
        padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        dy, dx = jax.random.randint(rng, (2,), 0, 2 * padding + 1)
        return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)

    return augment


@gin.register(module="metax.data")
def horizontal_flip(probability: float = 0.5) -> Augment:
    """Mirrors the image left-right with ``probability``."""
    check_number("horizontal_flip probability", probability, 0)
    if probability > 1:
        raise ValueError(f"horizontal_flip probability must be in [0, 1], got {probability}.")

    def augment(rng: PRNGKey, image: Array) -> Array:
        return jnp.where(jax.random.bernoulli(rng, probability), image[:, ::-1], image)

    return augment


@gin.register(module="metax.data")
def color_jitter(
    brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4
) -> Augment:
    """Scales brightness, contrast (around the image mean) and saturation (around the per-pixel
    grey value) by factors drawn uniformly from ``[1 - s, 1 + s]``, in that order, then clips
    to [0, 1]. Saturation needs colour images (3 channels) and is skipped for others."""
    for name, value in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        if not 0 <= value <= 1:
            raise ValueError(f"color_jitter {name} must be in [0, 1], got {value}.")

    def augment(rng: PRNGKey, image: Array) -> Array:
        low = jnp.asarray([1 - brightness, 1 - contrast, 1 - saturation], image.dtype)
        high = jnp.asarray([1 + brightness, 1 + contrast, 1 + saturation], image.dtype)
        b, c, s = jax.random.uniform(rng, (3,), image.dtype, low, high)
        image = image * b
        image = (image - jnp.mean(image)) * c + jnp.mean(image)
        if image.shape[-1] == 3:
            grey = jnp.mean(image, axis=-1, keepdims=True)
            image = (image - grey) * s + grey
        return jnp.clip(image, 0.0, 1.0)

    return augment


def augment_images(augmentations: Sequence[Augment], rng: PRNGKey, images: Array) -> Array:
    """``augmentations`` applied in order to each of ``images (n, h, w, c)``, image i with keys
    from ``fold_in(rng, i)``."""

    def one(i, image):
        keys = jax.random.split(jax.random.fold_in(rng, i), len(augmentations))
        for key, augment in zip(keys, augmentations, strict=True):
            image = augment(key, image)
        return image

    return jax.vmap(one)(jnp.arange(images.shape[0]), images)
