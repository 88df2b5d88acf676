"""MAML meta-gradients against exact references (float64), and learning on sinusoid."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metax import data, energy, learner, meta_models, nn
from tests.helpers.gradcheck import (
    central_differences,
    closed_form_maml_gradient,
    linear_regression_batch,
    meta_gradient,
    sinusoid_mse_before_and_after,
)

ALPHA = 0.1


def tanh_mlp_problem(num_tasks=3):
    model = nn.mlp([4, 4], 1, activation=jnp.tanh)
    batch = data.sample_meta_batch(
        data.sinusoid(num_train_shots=6, num_test_shots=5, amplitude_range=(0.5, 1.5)),
        jax.random.key(3),
        num_tasks,
    )
    batch = jax.tree.map(lambda a: a.astype(jnp.float64), batch)
    return model, batch


def reference_meta_loss(model, theta, batch, num_steps):
    """MAML's objective written out independently: plain GD, mean over tasks of query MSE."""

    def mse(params, x, y):
        return jnp.mean((model.apply(params, {}, None, x)[0] - y) ** 2)

    def task_loss(train_x, train_y, test_x, test_y):
        params = theta
        for _ in range(num_steps):
            grads = jax.grad(mse)(params, train_x, train_y)
            params = jax.tree.map(lambda p, g: p - ALPHA * g, params, grads)
        return mse(params, test_x, test_y)

    losses = jax.vmap(task_loss)(batch.support.x, batch.support.y, batch.query.x, batch.query.y)
    return jnp.mean(losses)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_second_order_matches_finite_differences(x64, num_steps):
    model, batch = tanh_mlp_problem()
    maml = learner.maml(
        meta_models.learned_init(model),
        optax.sgd(ALPHA),
        optax.scale(1.0),
        num_inner_steps=num_steps,
    )
    state = maml.init(jax.random.key(1), batch)
    flat, unravel = ravel_pytree(state.meta_params["init"])
    loss_fn = jax.jit(lambda v: reference_meta_loss(model, unravel(v), batch, num_steps))
    expected = central_differences(loss_fn, flat)

    second, _ = ravel_pytree(meta_gradient(maml, state, batch)["init"])
    np.testing.assert_allclose(second, expected, rtol=1e-6, atol=1e-9)

    # First order drops the Hessian terms: the same finite-difference check must reject it,
    # which shows that the check above can fail.
    fo = learner.maml(
        meta_models.learned_init(model),
        optax.sgd(ALPHA),
        optax.scale(1.0),
        num_inner_steps=num_steps,
        first_order=True,
    )
    first, _ = ravel_pytree(meta_gradient(fo, state, batch)["init"])
    assert np.linalg.norm(first - expected) > 1e-3 * np.linalg.norm(expected)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("num_steps", [1, 5])
def test_linear_regression_closed_form(x64, first_order, num_steps):
    batch = linear_regression_batch()
    maml = learner.maml(
        meta_models.learned_init(nn.linear(1)),
        optax.sgd(ALPHA),
        optax.scale(1.0),
        num_inner_steps=num_steps,
        first_order=first_order,
    )
    state = maml.init(jax.random.key(1), batch)
    params = state.meta_params["init"]
    theta = np.concatenate([np.asarray(params["w"]), np.asarray(params["b"])[:, None]])
    expected = closed_form_maml_gradient(theta, batch, num_steps, first_order)
    grads = meta_gradient(maml, state, batch)["init"]
    actual = np.concatenate([np.asarray(grads["w"]), np.asarray(grads["b"])[:, None]])
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


def test_imaml_regularizer_enters_the_inner_loop(x64):
    """The iMAML proximal term lam/2 ||phi - theta||^2 is part of the inner energy, and its
    theta-dependence is differentiated too: finite differences of unrolled GD written out."""
    batch = linear_regression_batch(num_tasks=2)
    lam = 0.7
    meta_model = meta_models.learned_init(nn.linear(1), reg_strength=lam)
    maml = learner.maml(meta_model, optax.sgd(ALPHA), optax.scale(1.0), num_inner_steps=2)
    state = maml.init(jax.random.key(1), batch)
    theta = state.meta_params["init"]

    def meta_loss(theta):
        def task_loss(task):
            def inner(p):
                data_loss, _ = energy.squared_error(
                    task.support.x @ p["w"] + p["b"], task.support.y
                )
                return data_loss + 0.5 * lam * sum(
                    jnp.sum((a - b) ** 2)
                    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(theta), strict=True)
                )

            p = theta
            for _ in range(2):
                p = jax.tree.map(lambda a, g: a - ALPHA * g, p, jax.grad(inner)(p))
            return jnp.mean((task.query.x @ p["w"] + p["b"] - task.query.y) ** 2)

        return jnp.mean(jax.vmap(task_loss)(batch))

    flat, unravel = ravel_pytree(theta)
    expected = central_differences(jax.jit(lambda v: meta_loss(unravel(v))), flat)
    actual, _ = ravel_pytree(meta_gradient(maml, state, batch)["init"])
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-9)


def test_full_minibatch_equals_full_batch_and_smaller_differs(x64):
    model, batch = tanh_mlp_problem()
    state = None
    grads = {}
    for batch_size in (None, 6, 3):
        maml = learner.maml(
            meta_models.learned_init(model),
            optax.sgd(ALPHA),
            optax.scale(1.0),
            num_inner_steps=2,
            inner_batch_size=batch_size,
        )
        state = state or maml.init(jax.random.key(1), batch)
        grads[batch_size], _ = ravel_pytree(meta_gradient(maml, state, batch))
    np.testing.assert_allclose(grads[6], grads[None], rtol=1e-10)
    assert np.abs(grads[3] - grads[None]).max() > 1e-6


def test_invalid_arguments_are_rejected():
    meta_model = meta_models.learned_init(nn.linear(1))
    with pytest.raises(ValueError, match="num_inner_steps must be an integer >= 0"):
        learner.maml(meta_model, num_inner_steps=-1)
    maml = learner.maml(meta_model, inner_batch_size=50)
    batch = linear_regression_batch()
    state = maml.init(jax.random.key(0), batch)
    with pytest.raises(ValueError, match=r"inner batch_size must be in \[1, 7\]"):
        maml.meta_step(state, batch, jax.random.key(1))


def test_maml_learns_sinusoid():
    """A short run lowers the post-adaptation query MSE of held-out tasks well below its
    value at initialization (measured: 3.81 -> 0.73 after 2,000 steps)."""
    maml = learner.maml(meta_models.learned_init(nn.mlp([40, 40], 1)), num_inner_steps=1)
    before, after = sinusoid_mse_before_and_after(maml, steps=2000)
    assert after < 0.4 * before, (before, after)
