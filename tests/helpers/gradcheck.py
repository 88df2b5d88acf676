"""Exactness helpers: the meta-gradient a learner applies, finite differences, directional
derivatives, and closed-form MAML on linear regression."""

import jax
import jax.numpy as jnp
import numpy as np

from metax.data import Dataset, MetaBatch


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


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def assert_directional_derivatives(loss, flat, gradient, num_directions=2, eps=1e-5):
    """<gradient, v> against central differences of ``loss`` along random unit vectors v."""
    for i, v in enumerate(jax.random.normal(jax.random.key(4), (num_directions, flat.size))):
        v = v / jnp.linalg.norm(v)
        difference = (loss(flat + eps * v) - loss(flat - eps * v)) / (2 * eps)
        np.testing.assert_allclose(gradient @ v, difference, rtol=1e-6, err_msg=f"direction {i}")


# Closed-form MAML on linear regression (squared error, linear model, plain GD).
ALPHA = 0.1


def linear_regression_batch(num_tasks=4, n_train=7, n_test=9, dim=3):
    keys = jax.random.split(jax.random.key(7), 4)
    x_train = jax.random.normal(keys[0], (num_tasks, n_train, dim), jnp.float64)
    x_test = jax.random.normal(keys[1], (num_tasks, n_test, dim), jnp.float64)
    w_true = jax.random.normal(keys[2], (num_tasks, dim, 1), jnp.float64)
    y_train = x_train @ w_true + 0.1 * jax.random.normal(keys[3], (num_tasks, n_train, 1))
    y_test = x_test @ w_true
    return MetaBatch(Dataset(x_train, y_train, {}), Dataset(x_test, y_test, {}))


def closed_form_maml_gradient(theta, batch, num_steps, first_order, backprop_steps=None):
    """For squared error on a linear model: phi_K = theta after K GD steps and
    d phi_K / d theta = (I - alpha A)^K with A = (2/n) Z^T Z, Z = [x, 1]; backpropagating
    through the last T steps only (earlier steps first order) gives (I - alpha A)^T."""
    exact_steps = num_steps if backprop_steps is None else backprop_steps
    grads = []
    for t in range(batch.support.x.shape[0]):
        z = np.concatenate([batch.support.x[t], np.ones((batch.support.x.shape[1], 1))], axis=1)
        z_test = np.concatenate([batch.query.x[t], np.ones((batch.query.x.shape[1], 1))], axis=1)
        y, y_test = np.asarray(batch.support.y[t]), np.asarray(batch.query.y[t])
        A = 2.0 / len(z) * z.T @ z
        phi = theta.copy()
        for _ in range(num_steps):
            phi = phi - ALPHA * (A @ phi - 2.0 / len(z) * z.T @ y)
        outer_grad = 2.0 / len(z_test) * z_test.T @ (z_test @ phi - y_test)
        jacobian = np.linalg.matrix_power(np.eye(len(theta)) - ALPHA * A, exact_steps)
        grads.append(outer_grad if first_order else jacobian.T @ outer_grad)
    return np.mean(grads, axis=0)
