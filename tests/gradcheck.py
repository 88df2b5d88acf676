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


def finite_difference_meta_gradient(learner, state, batch, num_inner_steps, eps=1e-6):
    """Central differences of the mean query loss after adaptation (``learner.evaluate``)
    w.r.t. the flattened meta-parameters (use float64)."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(state.meta_params)

    @jax.jit
    def meta_loss(vector):
        per_task = learner.evaluate(
            state._replace(meta_params=unravel(vector)), batch, jax.random.key(0), num_inner_steps
        )
        return jnp.mean(per_task["loss"])

    return central_differences(meta_loss, flat, eps)


def sinusoid_mse_before_and_after(
    learner, steps, eval_inner_steps=5, amplitude_range=(0.1, 5.0), meta_batch_size=25
):
    """Post-adaptation query MSE of 200 held-out sinusoid tasks before and after ``steps``
    meta-steps (compiled as one scan)."""
    import jax.numpy as jnp

    from metax import data

    sampler = data.sinusoid(amplitude_range=amplitude_range)
    eval_batch = data.sample_meta_batch(sampler, jax.random.key(100), 200)
    state = learner.init(jax.random.key(0), eval_batch)
    evaluate = jax.jit(learner.evaluate, static_argnums=3)

    def mse(state):
        per_task = evaluate(state, eval_batch, jax.random.key(1), eval_inner_steps)
        return float(jnp.mean(per_task["loss"]))

    @jax.jit
    def train(state):
        def body(state, _):
            key = jax.random.fold_in(jax.random.key(2), state.step)
            batch = data.sample_meta_batch(sampler, key, meta_batch_size)
            return learner.meta_step(state, batch, jax.random.fold_in(key, 1))

        return jax.lax.scan(body, state, length=steps)[0]

    return mse(state), mse(train(state))
