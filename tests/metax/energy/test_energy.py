"""Energies return (value, metrics) with documented factors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax import energy


def test_squared_error_is_the_mean_squared_error_without_half():
    loss, metrics = energy.squared_error(jnp.array([[1.0], [2.0]]), jnp.array([[0.0], [0.0]]))
    assert float(loss) == pytest.approx(2.5) and float(metrics["loss"]) == pytest.approx(2.5)


def test_masked_loss_is_the_mean_over_unmasked_samples():
    pred, target = jnp.array([[1.0], [2.0], [5.0]]), jnp.zeros((3, 1))
    masked, _ = energy.squared_error(pred, target, mask=jnp.array([1, 1, 0]))
    unmasked, _ = energy.squared_error(pred[:2], target[:2])
    assert float(masked) == pytest.approx(float(unmasked))


def test_cross_entropy_and_accuracy():
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    loss, metrics = energy.cross_entropy(logits, jnp.array([0, 1]))
    assert float(loss) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(0.5)
    masked, metrics = energy.cross_entropy(logits, jnp.array([0, 1]), mask=jnp.array([1, 0]))
    assert float(masked) == pytest.approx(-np.log(0.7), rel=1e-5)
    assert float(metrics["accuracy"]) == 1.0


def test_regularizers_have_the_half_factor():
    p, c = {"a": jnp.array([1.0, 3.0])}, {"a": jnp.array([0.0, 1.0])}
    assert float(energy.l2_pull(p, c, 2.0)[0]) == pytest.approx(0.5 * 2.0 * (1 + 4))
    log_s = {"a": jnp.log(jnp.array([2.0, 4.0]))}
    assert float(energy.complex_synapse(p, c, log_s)[0]) == pytest.approx(0.5 * (2 * 1 + 4 * 4))
    assert float(energy.learned_l2(p, log_s)[0]) == pytest.approx(0.5 * (2 * 1 + 4 * 9))
    assert float(energy.lnorm(p, order=1.0, strength=3.0)[0]) == pytest.approx(12.0)


def test_sum_energies_adds_values_and_merges_metrics():
    total, metrics = energy.sum_energies(
        (jnp.array(1.0), {"loss": 1.0}), (jnp.array(2.0), {"l2_pull": 2.0})
    )
    assert float(total) == 3.0 and metrics == {"loss": 1.0, "l2_pull": 2.0}
    with pytest.raises(ValueError):
        energy.sum_energies()


def test_kl_divergence_to_soft_targets():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = jnp.array([[0.7, 0.3, 0.0], [0.1, 0.2, 0.7]])
    log_q = jax.nn.log_softmax(logits)
    safe = jnp.where(targets > 0, targets, 1.0)
    expected = jnp.mean(jnp.sum(targets * (jnp.log(safe) - log_q), -1))
    loss, metrics = energy.kl_divergence(logits, targets)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert "accuracy" not in metrics
    # Zero at the targets; the gradient in the logits is (softmax - targets) / n.
    zero, _ = energy.kl_divergence(jnp.log(jnp.array([[0.2, 0.8]])), jnp.array([[0.2, 0.8]]))
    np.testing.assert_allclose(zero, 0.0, atol=1e-6)
    grad = jax.grad(lambda z: energy.kl_divergence(z, targets)[0])(logits)
    np.testing.assert_allclose(grad, (jax.nn.softmax(logits) - targets) / 2, rtol=1e-5, atol=1e-7)
    _, metrics = energy.kl_divergence(logits, targets, hard_targets=jnp.array([0, 1]))
    np.testing.assert_allclose(metrics["accuracy"], 0.5)
    # Integer labels are one-hot targets: the loss is the cross-entropy.
    labels = jnp.array([0, 2])
    kl, kl_metrics = energy.kl_divergence(logits, labels)
    ce, ce_metrics = energy.cross_entropy(logits, labels)
    np.testing.assert_allclose(kl, ce, rtol=1e-6)
    np.testing.assert_allclose(kl_metrics["accuracy"], ce_metrics["accuracy"])
    masked, _ = energy.kl_divergence(logits, targets, mask=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(masked, energy.kl_divergence(logits[:1], targets[:1])[0], rtol=1e-6)
    with pytest.raises(ValueError, match="kl_divergence needs target probabilities"):
        energy.kl_divergence(logits, targets[:, :2])
