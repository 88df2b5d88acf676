"""Energies: losses and regularizers as pure functions returning ``(value, metrics)``.

Losses average over the sample axis (axis 0) and carry **no 1/2 factor**: ``squared_error`` is
the mean squared error that papers report (summed over output dimensions). Regularizers are
quadratic forms **with** the 1/2 factor (``strength / 2 * ||phi - theta||^2``), so that their
gradient is ``strength * (phi - theta)`` as in iMAML and CML.

Masks have shape ``(n,)`` with values in {0, 1}: a masked loss is the mean over unmasked
samples (padding does not change the loss).
"""

import functools
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp

from metax.types import Array, Metrics, Params

Energy = Callable[..., tuple[Array, Metrics]]


def _masked_mean(per_sample: Array, mask: Array | None) -> Array:
    if mask is None:
        return jnp.mean(per_sample)
    mask = mask.astype(per_sample.dtype)
    return jnp.sum(per_sample * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@gin.register(module="metax.energy")
def squared_error(
    predictions: Array, targets: Array, mask: Array | None = None
) -> tuple[Array, Metrics]:
    """Mean over samples of ``sum_j (predictions - targets)_j^2``; shapes ``(n, ...)``, equal.

    Raises a ValueError (at trace time) if the shapes differ: broadcasting ``(n, 1)`` against
    ``(n,)`` or ``(n, k)`` would silently compute another loss.
    """
    if predictions.shape != targets.shape:
        raise ValueError(
            f"squared_error: the model predicts shape {tuple(predictions.shape)} but the "
            f"targets have shape {tuple(targets.shape)}; make the model's output size match "
            f"the targets (e.g. out_features of its last layer)."
        )
    per_sample = jnp.sum(
        jnp.reshape((predictions - targets) ** 2, (predictions.shape[0], -1)), axis=-1
    )
    loss = _masked_mean(per_sample, mask)
    return loss, {"loss": loss}


@gin.register(module="metax.energy")
def cross_entropy(logits: Array, labels: Array, mask: Array | None = None) -> tuple[Array, Metrics]:
    """Softmax cross-entropy with integer labels; logits ``(n, classes)``, labels ``(n,)``.

    Metrics: ``loss`` and ``accuracy`` (argmax equals label), both masked alike. Raises a
    ValueError (at trace time) unless the labels are integers of shape ``logits.shape[:-1]``.
    """
    if labels.shape != logits.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"cross_entropy needs integer labels of shape {tuple(logits.shape[:-1])} for logits "
            f"of shape {tuple(logits.shape)}, got {labels.dtype} labels of shape "
            f"{tuple(labels.shape)}; use it for classification tasks, squared_error for "
            f"regression."
        )
    if not isinstance(labels, jax.core.Tracer) and labels.size:
        low, high = int(jnp.min(labels)), int(jnp.max(labels))
        if low < 0 or high >= logits.shape[-1]:
            raise ValueError(
                f"cross_entropy labels must be in [0, {logits.shape[-1]}) for {logits.shape[-1]} "
                f"classes, got labels in [{low}, {high}]: give the model one output per class."
            )
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype)
    loss = _masked_mean(nll, mask)
    return loss, {"loss": loss, "accuracy": _masked_mean(correct, mask)}


@gin.register(module="metax.energy")
def kl_divergence(
    logits: Array,
    targets: Array,
    mask: Array | None = None,
    hard_targets: Array | None = None,
) -> tuple[Array, Metrics]:
    """``KL(targets || softmax(logits))`` averaged over samples; logits ``(n, classes)``.

    ``targets``: probabilities ``(n, classes)`` (soft targets, e.g. a teacher's), or integer
    labels ``(n,)`` read as one-hot (then the loss equals `cross_entropy`). Metrics: ``loss``,
    and ``accuracy`` (argmax of the logits equals the hard label) when hard labels are known:
    integer ``targets`` or ``hard_targets`` ``(n,)``. Raises a ValueError at trace time when
    the shapes do not fit.
    """
    if jnp.issubdtype(targets.dtype, jnp.integer) and targets.shape == logits.shape[:-1]:
        hard_targets = targets if hard_targets is None else hard_targets
        targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    if targets.shape != logits.shape:
        raise ValueError(
            f"kl_divergence needs target probabilities of the logits' shape "
            f"{tuple(logits.shape)} (or integer labels of shape {tuple(logits.shape[:-1])}), "
            f"got {targets.dtype} targets of shape {tuple(targets.shape)}."
        )
    log_probs = jax.nn.log_softmax(logits)
    # xlogy: 0 * log 0 = 0, so one-hot and sparse soft targets have a finite entropy term.
    per_sample = jnp.sum(jax.scipy.special.xlogy(targets, targets) - targets * log_probs, -1)
    loss = _masked_mean(per_sample, mask)
    metrics = {"loss": loss}
    if hard_targets is not None:
        if hard_targets.shape != logits.shape[:-1]:
            raise ValueError(
                f"kl_divergence hard_targets must have shape {tuple(logits.shape[:-1])}, got "
                f"{tuple(hard_targets.shape)}."
            )
        correct = (jnp.argmax(logits, axis=-1) == hard_targets).astype(logits.dtype)
        metrics["accuracy"] = _masked_mean(correct, mask)
    return loss, metrics


def _tree_sum(tree) -> Array:
    # A left fold, as Python's sum (0 + x is x exactly): the order of the additions is kept.
    return functools.reduce(jnp.add, [jnp.sum(leaf) for leaf in jax.tree.leaves(tree)])


@gin.register(module="metax.energy")
def l2_pull(params: Params, center: Params, strength: float | Array) -> tuple[Array, Metrics]:
    """iMAML's proximal term ``strength / 2 * ||params - center||^2`` over matching pytrees."""
    sq = jax.tree.map(lambda p, c: (p - c) ** 2, params, center)
    value = 0.5 * strength * _tree_sum(sq)
    return value, {"l2_pull": value}


@gin.register(module="metax.energy")
def complex_synapse(params: Params, omega: Params, log_strength: Params) -> tuple[Array, Metrics]:
    """CML's complex synapse ``1/2 * sum_i exp(log_strength_i) * (params_i - omega_i)^2``.

    ``log_strength`` has the structure and shapes of ``params`` (one strength per synapse).
    """
    terms = jax.tree.map(lambda p, o, s: jnp.exp(s) * (p - o) ** 2, params, omega, log_strength)
    value = 0.5 * _tree_sum(terms)
    return value, {"complex_synapse": value}


@gin.register(module="metax.energy")
def learned_l2(params: Params, log_strength: Params) -> tuple[Array, Metrics]:
    """Weight decay with learned per-parameter strengths: ``1/2 sum exp(s_i) * params_i^2``."""
    terms = jax.tree.map(lambda p, s: jnp.exp(s) * p**2, params, log_strength)
    value = 0.5 * _tree_sum(terms)
    return value, {"learned_l2": value}


@gin.register(module="metax.energy")
def lnorm(params: Params, order: float = 2.0, strength: float = 1.0) -> tuple[Array, Metrics]:
    """``strength * sum_i |params_i|^order`` (order 1: lasso, 2: ridge without the 1/2)."""
    value = strength * _tree_sum(jax.tree.map(lambda p: jnp.abs(p) ** order, params))
    return value, {"lnorm": value}


def sum_energies(*terms: tuple[Array, Metrics]) -> tuple[Array, Metrics]:
    """Adds ``(value, metrics)`` pairs; metrics are merged (later names win)."""
    if not terms:
        raise ValueError("sum_energies needs at least one (value, metrics) term.")
    total = functools.reduce(jnp.add, [value for value, _ in terms])
    metrics: Metrics = {}
    for _, m in terms:
        metrics.update(m)
    return total, metrics
