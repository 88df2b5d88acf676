"""Helpers for exactness tests: the meta-gradient a learner applies, and finite differences."""

import jax
import numpy as np


def meta_gradient(learner, state, batch, rng=None):
    """The meta-gradient of one meta-step, for a learner built with ``optax.scale(1.0)`` as
    outer optimizer (then new - old meta-parameters = the gradient, to rounding)."""
    rng = jax.random.key(0) if rng is None else rng
    new_state, _ = jax.jit(learner.meta_step)(state, batch, rng)
    return jax.tree.map(lambda new, old: new - old, new_state.meta_params, state.meta_params)


def central_differences(fn, flat, eps=1e-6):
    """Gradient of scalar ``fn`` at the vector ``flat`` by central differences (use float64)."""
    basis = np.eye(flat.size)
    return np.array([(fn(flat + eps * e) - fn(flat - eps * e)) / (2 * eps) for e in basis])
