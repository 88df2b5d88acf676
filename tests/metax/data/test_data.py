"""Synthetic task samplers: shapes, ranges, determinism, and split-independence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax import data


def test_sinusoid_shapes_and_paper_ranges():
    batch = data.sample_meta_batch(data.sinusoid(), jax.random.key(0), 500)
    assert batch.support.x.shape == (500, 10, 1) and batch.query.y.shape == (500, 10, 1)
    x = np.concatenate([batch.support.x, batch.query.x], axis=1)
    y = np.concatenate([batch.support.y, batch.query.y], axis=1)
    assert x.min() >= -5 and x.max() <= 5
    # Recover A and phi per task from y = A sin(x - phi) by least squares on [sin x, cos x].
    basis = np.stack([np.sin(x[..., 0]), np.cos(x[..., 0])], axis=-1)
    coef = np.stack(
        [np.linalg.lstsq(b, t[:, 0], rcond=None)[0] for b, t in zip(basis, y, strict=True)]
    )
    amplitude = np.hypot(coef[:, 0], coef[:, 1])
    phase = np.arctan2(-coef[:, 1], coef[:, 0])
    np.testing.assert_allclose(
        np.concatenate([batch.support.y, batch.query.y], 1)[..., 0],
        amplitude[:, None] * np.sin(x[..., 0] - phase[:, None]),
        atol=1e-4,
    )
    assert amplitude.min() >= 0.1 - 1e-4 and amplitude.max() <= 5.0 + 1e-4
    assert phase.min() >= -1e-4 and phase.max() <= math.pi + 1e-4
    assert amplitude.max() > 4.5 and amplitude.min() < 0.6  # The whole range is used.


def test_ood_sinusoid_amplitudes_lie_outside_the_training_range():
    batch = data.sample_meta_batch(data.sinusoid(mode="ood"), jax.random.key(0), 200)
    peak = np.abs(np.concatenate([batch.support.y, batch.query.y], 1)).max(axis=(1, 2))
    assert peak.max() <= 10.0 + 1e-4 and np.median(peak) > 5.0


def test_task_i_does_not_depend_on_how_the_batch_is_split():
    sampler = data.sinusoid()
    whole = data.sample_meta_batch(sampler, jax.random.key(3), 16)
    second_half = data.sample_meta_batch(sampler, jax.random.key(3), 8, first_task=8)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[8:], b), whole, second_half)
    again = data.sample_meta_batch(sampler, jax.random.key(3), 16)
    jax.tree.map(np.testing.assert_array_equal, whole, again)
    assert not np.allclose(whole.support.y[0], whole.support.y[1])


@pytest.mark.parametrize(
    "name", ["harmonic", "linear", "polynomial", "sawtooth", "sinusoid_family"]
)
@pytest.mark.parametrize("mode", ["train", "ood"])
def test_families_shapes_and_ranges(name, mode):
    sampler = getattr(data, name)(num_train_shots=5, num_test_shots=15, mode=mode)
    batch = data.sample_meta_batch(sampler, jax.random.key(1), 64)
    y = np.concatenate([batch.support.y, batch.query.y], 1)
    assert batch.support.x.shape == (64, 5, 1) and batch.query.y.shape == (64, 15, 1)
    assert np.isfinite(y).all()
    bound = {
        ("harmonic", "train"): 1.0,
        ("linear", "train"): 1.0,
        ("polynomial", "train"): 1.0,
        ("sawtooth", "train"): 1.0,
        ("sinusoid_family", "train"): 1.0,
        ("harmonic", "ood"): 1.0,
        ("linear", "ood"): 3.0,
        ("polynomial", "ood"): 1.0,
        ("sawtooth", "ood"): 2.0,
        ("sinusoid_family", "ood"): 2.0,
    }[(name, mode)]
    assert np.abs(y).max() <= bound + 1e-5
    if name == "polynomial":  # Rescaled per task to span exactly [-1, 1].
        np.testing.assert_allclose(y.min(axis=(1, 2)), -1.0, atol=1e-5)
        np.testing.assert_allclose(y.max(axis=(1, 2)), 1.0, atol=1e-5)


def test_family_mixture_labels_members():
    batch = data.sample_meta_batch(data.family(), jax.random.key(2), 400)
    ids = np.asarray(batch.support.info["task_id"])
    np.testing.assert_array_equal(ids, batch.query.info["task_id"])
    assert set(ids.tolist()) == set(range(len(data.FAMILY_NAMES)))
    # Linear members (id 1) are affine in x: their second differences vanish after sorting.
    linear_tasks = np.where(ids == data.FAMILY_NAMES.index("linear"))[0]
    for t in linear_tasks[:5]:
        x = np.concatenate([batch.support.x[t], batch.query.x[t]])[:, 0]
        y = np.concatenate([batch.support.y[t], batch.query.y[t]])[:, 0]
        slope = np.polyfit(x, y, 1)
        np.testing.assert_allclose(np.polyval(slope, x), y, atol=1e-5)


def test_sampling_runs_inside_jit():
    sample = jax.jit(lambda key: data.sample_meta_batch(data.family(), key, 8))
    batch = sample(jax.random.key(0))
    assert batch.support.x.shape == (8, 10, 1) and batch.support.x.dtype == jnp.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        data.sinusoid(mode="validation")
    with pytest.raises(ValueError, match="num_train_shots must be an integer >= 1"):
        data.harmonic(num_train_shots=0)
