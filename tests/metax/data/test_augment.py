"""Augmentations: each transform does exactly what it says, is a pure function of its key, and
runs inside the episode sampler under jit without changing the unaugmented episodes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax import data


def image(h=6, w=5, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(h, w, c)), jnp.float32)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = image()
    crop = data.random_crop(padding=2)
    padded = np.pad(np.asarray(x), ((2, 2), (2, 2), (0, 0)))
    offsets = set()
    for seed in range(40):
        out = np.asarray(crop(jax.random.key(seed), x))
        assert out.shape == x.shape
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(out, padded[dy : dy + 6, dx : dx + 5])
        ]
        assert matches, "not a window of the padded image"
        offsets.update(matches)
    assert len(offsets) > 10  # Many different windows are drawn.
    np.testing.assert_array_equal(data.random_crop(0)(jax.random.key(0), x), x)


def test_horizontal_flip_mirrors_or_keeps():
    x = image()
    flips = [np.asarray(data.horizontal_flip()(jax.random.key(s), x)) for s in range(20)]
    mirrored = [np.array_equal(f, np.asarray(x)[:, ::-1]) for f in flips]
    kept = [np.array_equal(f, np.asarray(x)) for f in flips]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert any(mirrored) and any(kept)
    assert not any(
        np.array_equal(data.horizontal_flip(0.0)(jax.random.key(s), x), x[:, ::-1])
        for s in range(5)
    )


def test_color_jitter_brightness_scales_and_clips_and_zero_strength_is_identity():
    x = image()
    brightness = data.color_jitter(brightness=0.5, contrast=0.0, saturation=0.0)
    out = np.asarray(brightness(jax.random.key(3), x))
    ratio = out[np.asarray(x) * 1.5 < 1.0] / np.asarray(x)[np.asarray(x) * 1.5 < 1.0]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # One factor for the whole image.
    assert 0.5 <= ratio[0] <= 1.5 and out.max() <= 1.0
    identity = data.color_jitter(0.0, 0.0, 0.0)
    np.testing.assert_allclose(identity(jax.random.key(0), x), x, rtol=1e-6, atol=1e-7)
    grey = data.color_jitter(0.0, 0.0, 1.0)(jax.random.key(1), image(c=1))
    assert grey.shape == (6, 5, 1)
    with pytest.raises(ValueError, match="brightness must be in"):
        data.color_jitter(brightness=2.0)


def test_fewshot_augments_inside_jit_purely_and_leaves_unaugmented_episodes_alone():
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 8, 8, 3), dtype=np.uint8)
    plain = data.fewshot(images, data.Episodes(ways=3, shots=1, queries=2))
    augmented = data.fewshot(
        images,
        data.Episodes(
            ways=3, shots=1, queries=2, augmentations=(data.random_crop(2), data.horizontal_flip())
        ),
    )
    support_only = data.fewshot(
        images,
        data.Episodes(
            ways=3, shots=1, queries=2, augmentations=(data.random_crop(2),), augment_query=False
        ),
    )
    key = jax.random.key(7)
    a = jax.jit(plain.sample_task)(key)
    b = jax.jit(augmented.sample_task)(key)
    c = jax.jit(support_only.sample_task)(key)
    np.testing.assert_array_equal(b.support.y, a.support.y)  # Same classes and labels.
    assert b.support.x.shape == a.support.x.shape
    assert not np.array_equal(b.support.x, a.support.x) and not np.array_equal(b.query.x, a.query.x)
    np.testing.assert_array_equal(c.query.x, a.query.x)
    np.testing.assert_array_equal(jax.jit(augmented.sample_task)(key).support.x, b.support.x)
    batch = data.sample_meta_batch(augmented, key, 4)
    assert batch.support.x.shape == (4, 3, 8, 8, 3)


def test_augmentations_are_configured_from_gin():
    import gin

    import metax.train.configurables  # noqa: F401

    gin.clear_config()
    try:
        gin.parse_config(
            "metax.data.Episodes.augmentations = "
            "(@metax.data.random_crop(), @metax.data.color_jitter())\n"
            "metax.data.random_crop.padding = 1\n"
        )
        images = np.random.default_rng(0).integers(0, 256, (6, 4, 8, 8, 3), dtype=np.uint8)
        episodes = gin.get_configurable("metax.data.Episodes")(ways=2, shots=1, queries=1)
        sampler = data.fewshot(images, episodes)
    finally:
        gin.clear_config()
    plain = data.fewshot(images, data.Episodes(ways=2, shots=1, queries=1))
    key = jax.random.key(0)
    assert not np.array_equal(sampler.sample_task(key).support.x, plain.sample_task(key).support.x)
