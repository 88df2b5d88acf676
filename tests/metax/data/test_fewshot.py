"""On-device N-way K-shot episode sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax import data
from metax.data import Episodes, fewshot

NUM_CLASSES, PER_CLASS = 12, 20


def coded_images():
    """Image (c, i) is a 2x2 patch whose pixels all equal 1000 c + i: decodable."""
    codes = 1000.0 * np.arange(NUM_CLASSES)[:, None] + np.arange(PER_CLASS)[None, :]
    return np.broadcast_to(codes[:, :, None, None, None], (NUM_CLASSES, PER_CLASS, 2, 2, 1))


def test_episode_shapes_labels_and_disjoint_examples():
    sampler = fewshot(coded_images(), Episodes(ways=5, shots=2, queries=3))
    batch = jax.jit(lambda k: data.sample_meta_batch(sampler, k, 16))(jax.random.key(0))
    assert batch.support.x.shape == (16, 10, 2, 2, 1) and batch.query.x.shape == (16, 15, 2, 2, 1)
    assert batch.support.y.dtype == jnp.int32
    for t in range(16):
        classes = np.asarray(batch.support.info["classes"][t])
        assert len(set(classes.tolist())) == 5  # Distinct classes.
        for part, n in ((batch.support, 2), (batch.query, 3)):
            codes = np.asarray(part.x[t, :, 0, 0, 0]).astype(int)
            labels = np.asarray(part.y[t])
            np.testing.assert_array_equal(labels, np.repeat(np.arange(5), n))
            np.testing.assert_array_equal(codes // 1000, classes[labels])  # Label -> class.
        support = set(np.asarray(batch.support.x[t, :, 0, 0, 0]).astype(int).tolist())
        query = set(np.asarray(batch.query.x[t, :, 0, 0, 0]).astype(int).tolist())
        assert len(support) == 10 and len(query) == 15 and not support & query
    # Labels are permuted per episode: the class behind label 0 varies.
    assert len(set(np.asarray(batch.support.info["classes"][:, 0]).tolist())) > 1


def test_episodes_are_deterministic_per_key_and_differ_across_keys():
    sampler = fewshot(coded_images(), Episodes(ways=3, shots=1, queries=2))
    a = data.sample_meta_batch(sampler, jax.random.key(1), 4)
    b = data.sample_meta_batch(sampler, jax.random.key(1), 4)
    c = data.sample_meta_batch(sampler, jax.random.key(2), 4)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.support.x, c.support.x)


def test_sampling_needs_no_host_transfer_once_compiled():
    sampler = fewshot(jnp.asarray(coded_images()), Episodes(ways=3, shots=1, queries=2))
    sample = jax.jit(lambda k: data.sample_meta_batch(sampler, k, 4))
    key = jax.random.key(3)
    jax.block_until_ready(sample(key))
    with jax.transfer_guard("disallow"):
        jax.block_until_ready(sample(key))


def test_rotations_become_separate_classes():
    images = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4, 1).astype(np.uint8)
    sampler = fewshot(images, Episodes(ways=8, shots=1, queries=2), rotations=True)
    episode = sampler.sample_task(jax.random.key(0))
    classes = np.asarray(episode.support.info["classes"])
    assert sorted(classes.tolist()) == list(range(8))  # 2 classes x 4 rotations, all drawn.
    for label, cls in enumerate(classes):
        base, turns = cls % 2, cls // 2
        x = np.asarray(episode.support.x[label, :, :, 0])  # Scaled from uint8 to [0, 1].
        candidates = [np.rot90(images[base, i, :, :, 0], turns) / 255.0 for i in range(3)]
        assert any(np.allclose(x, c) for c in candidates)


def test_impossible_episodes_are_refused():
    with pytest.raises(ValueError, match="only 12 classes"):
        fewshot(coded_images(), Episodes(ways=20))
    assert fewshot(coded_images(), Episodes(ways=20), rotations=True)  # 48 classes with rotations.
    with pytest.raises(ValueError, match="only 20 images per class"):
        fewshot(coded_images(), Episodes(ways=5, shots=5, queries=16))


def test_grouped_episodes_draw_all_classes_from_one_group():
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 2, 2, 1), dtype=np.uint8)
    groups = np.array([0, 0, 0, 1, 1, 2])
    sampler = data.fewshot(
        images, data.Episodes(ways=3, shots=1, queries=1), rotations=True, groups=groups
    )
    seen = set()
    for seed in range(30):
        classes = np.asarray(
            jax.jit(sampler.sample_task)(jax.random.key(seed)).support.info["classes"]
        )
        episode_groups = set(groups[classes % 6].tolist())
        assert len(episode_groups) == 1 and len(set(classes.tolist())) == 3
        seen |= episode_groups
    assert seen == {0, 1, 2}  # With rotations, even group 2 (one character) has 4 classes.
    with pytest.raises(ValueError, match="no group has 5 classes"):
        data.fewshot(images, data.Episodes(ways=5, shots=1, queries=1), groups=groups)
    with pytest.raises(ValueError, match="one id per class"):
        data.fewshot(images, data.Episodes(ways=2, shots=1, queries=1), groups=groups[:3])
