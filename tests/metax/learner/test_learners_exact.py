"""Every learner's meta-gradient against the exact answer on a quadratic inner problem (float64).

Linear regression with iMAML's regularizer: for one task with Z = [x, 1],
A = (2/n) Z^T Z, c = (2/n) Z^T y (support), B = (2/m) Z'^T Z', c' = (2/m) Z'^T y' (query):

  E_in(theta, phi) = mean (Z phi - y)^2 + lam/2 ||phi - theta||^2,   H = A + lam I
  phi* = H^-1 (c + lam theta),   E_out(phi) = mean (Z' phi - y')^2,   v = B phi* - c'
  exact hypergradient: dE_out(phi*(theta))/dtheta = lam H^-1 v.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metax import learner, meta_models, nn
from metax.data import Dataset, MetaBatch
from tests.helpers.gradcheck import meta_gradient

LAM = 1.0
DIM = 3


def quadratic_batch(num_tasks=2, n_train=10, n_test=8, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(11), 4)
    x_train = jax.random.normal(keys[0], (num_tasks, n_train, DIM), dtype)
    x_test = jax.random.normal(keys[1], (num_tasks, n_test, DIM), dtype)
    w = jax.random.normal(keys[2], (num_tasks, DIM, 1), dtype)
    y_train = x_train @ w + 0.3 * jax.random.normal(keys[3], (num_tasks, n_train, 1))
    return MetaBatch(Dataset(x_train, y_train, {}), Dataset(x_test, x_test @ w, {}))


def design(x):
    x = np.asarray(x)
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def task_terms(batch, t):
    z, zq = design(batch.support.x[t]), design(batch.query.x[t])
    y, yq = np.asarray(batch.support.y[t]), np.asarray(batch.query.y[t])
    return (
        2 / len(z) * z.T @ z,
        2 / len(z) * z.T @ y,
        2 / len(zq) * zq.T @ zq,
        2 / len(zq) * zq.T @ yq,
    )


def flat(params):
    return np.concatenate([np.asarray(params["w"]), np.asarray(params["b"])[:, None]])


def exact_hypergradient(theta, batch, inverse=None):
    """lam * inverse(H) v averaged over tasks; ``inverse(H)`` defaults to H^-1."""
    grads = []
    for t in range(batch.support.x.shape[0]):
        A, c, B, cq = task_terms(batch, t)
        H = A + LAM * np.eye(len(A))
        phi = np.linalg.solve(H, c + LAM * theta)
        v = B @ phi - cq
        grads.append(LAM * (np.linalg.inv(H) if inverse is None else inverse(H)) @ v)
    return np.mean(grads, axis=0)


def inner_rate(batch):
    """A GD step size 1/lambda_max(H) over all tasks (safe for any phase)."""
    top = max(np.linalg.eigvalsh(task_terms(batch, t)[0]).max() for t in range(2))
    return 1.0 / (top + LAM + 0.5)


def build(make_learner, **kwargs):
    batch = quadratic_batch()
    meta_model = meta_models.learned_init(nn.linear(1), reg_strength=LAM)
    alpha = inner_rate(batch)
    lrn = make_learner(
        meta_model, inner_optimizer=optax.sgd(alpha), outer_optimizer=optax.scale(1.0), **kwargs
    )
    state = lrn.init(jax.random.key(0), batch)
    # Start away from zero so that every term of the formula matters.
    theta = {"w": jnp.array([[0.5], [-1.0], [2.0]]), "b": jnp.array([0.7])}
    state = state._replace(meta_params={"init": theta}, opt_state=optax.scale(1.0).init(theta))
    return lrn, state, batch, flat(theta), alpha


@pytest.mark.parametrize("solver", ["cg", "gmres", "bicgstab"])
def test_implicit_conjugate_gradient_is_exact(x64, solver):
    lrn, state, batch, theta, _ = build(
        learner.implicit,
        inverse_hvp=learner.conjugate_gradient(num_steps=20, solver=solver),
        num_inner_steps=300,
    )
    actual = flat(meta_gradient(lrn, state, batch)["init"])
    np.testing.assert_allclose(actual, exact_hypergradient(theta, batch), rtol=1e-8)


def test_recurrent_backprop_is_the_truncated_neumann_series_and_converges(x64):
    errors = {}
    for K in (5, 20):
        lrn, state, batch, theta, _ = build(
            learner.implicit,
            inverse_hvp=learner.recurrent_backprop(num_steps=K, alpha=0.2),
            num_inner_steps=300,
        )
        actual = flat(meta_gradient(lrn, state, batch)["init"])

        def truncated(H, K=K):
            M = np.eye(len(H)) - 0.2 * H
            return (np.eye(len(H)) - np.linalg.matrix_power(M, K + 1)) @ np.linalg.inv(H)

        np.testing.assert_allclose(actual, exact_hypergradient(theta, batch, truncated), rtol=1e-9)
        errors[K] = np.linalg.norm(actual - exact_hypergradient(theta, batch))
    # Geometric convergence (alpha = 0.2 < 2 / lambda_max(H) here): 15 more terms shrink the
    # error by at least rho^15 with rho = max |1 - alpha lambda_i| < 1.
    rho = max(
        np.abs(1 - 0.2 * (np.linalg.eigvalsh(task_terms(batch, t)[0]) + LAM)).max()
        for t in range(2)
    )
    assert rho < 1 and errors[20] <= errors[5] * rho**15 * 1.01


def test_t1t2_uses_the_identity_for_the_inverse_hessian(x64):
    lrn, state, batch, theta, _ = build(
        learner.implicit, inverse_hvp=learner.t1t2(), num_inner_steps=300
    )
    actual = flat(meta_gradient(lrn, state, batch)["init"])
    expected = exact_hypergradient(theta, batch, lambda H: np.eye(len(H)))
    np.testing.assert_allclose(actual, expected, rtol=1e-9)
    assert np.linalg.norm(actual - exact_hypergradient(theta, batch)) > 1e-2


def test_unrolled_maml_approaches_the_implicit_gradient(x64):
    errors = {}
    for K in (10, 300):
        lrn, state, batch, theta, _ = build(learner.maml, num_inner_steps=K)
        actual = flat(meta_gradient(lrn, state, batch)["init"])
        exact = exact_hypergradient(theta, batch)
        errors[K] = np.linalg.norm(actual - exact) / np.linalg.norm(exact)
    assert errors[10] > 1e-3 and errors[300] < 1e-9


def test_reptile_closed_form(x64):
    """On the unregularized quadratic over support + query, A_all phi - c_all = A_all(phi - a):
    theta - phi_K = (I - (I - alpha A_all)^K)(theta - a), a = A_all^-1 c_all."""
    batch = quadratic_batch()
    meta_model = meta_models.learned_init(nn.linear(1))
    alpha, K = 0.05, 7
    lrn = learner.reptile(meta_model, optax.sgd(alpha), optax.scale(1.0), num_inner_steps=K)
    state = lrn.init(jax.random.key(0), batch)
    theta = flat(state.meta_params["init"])
    expected = []
    for t in range(2):
        z = design(np.concatenate([batch.support.x[t], batch.query.x[t]]))
        y = np.concatenate([batch.support.y[t], batch.query.y[t]])
        A, c = 2 / len(z) * z.T @ z, 2 / len(z) * z.T @ y
        a = np.linalg.solve(A, c)
        expected.append(
            (np.eye(4) - np.linalg.matrix_power(np.eye(4) - alpha * A, K)) @ (theta - a)
        )
    actual = flat(meta_gradient(lrn, state, batch)["init"])
    np.testing.assert_allclose(actual, np.mean(expected, axis=0), rtol=1e-10)


def test_buffered_reptile_sums_the_partial_meta_gradients(x64):
    """With iMAML's regularizer, d/dtheta E_in(theta, phi_k) = -lam (phi_k - theta): the
    meta-gradient is -lam sum_{k<K} (phi_k - theta) along the GD trajectory on support+query."""
    lrn, state, batch, theta, alpha = build(learner.buffered_reptile, num_inner_steps=6)
    expected = []
    for t in range(2):
        z = design(np.concatenate([batch.support.x[t], batch.query.x[t]]))
        y = np.concatenate([batch.support.y[t], batch.query.y[t]])
        A, c = 2 / len(z) * z.T @ z, 2 / len(z) * z.T @ y
        phi, total = theta.copy(), np.zeros_like(theta)
        for _ in range(6):
            total += -LAM * (phi - theta)
            phi = phi - alpha * (A @ phi - c + LAM * (phi - theta))
        expected.append(total)
    actual = flat(meta_gradient(lrn, state, batch)["init"])
    np.testing.assert_allclose(actual, np.mean(expected, axis=0), rtol=1e-10)
    assert np.abs(actual).max() > 1e-3


@pytest.mark.parametrize("symmetric, order", [(False, 2.0), (True, 4.0)])
def test_eqprop_error_shrinks_linearly_or_quadratically_in_beta(x64, symmetric, order):
    errors = []
    for beta in (0.2, 0.1):
        lrn, state, batch, theta, _ = build(
            learner.eqprop,
            beta=beta,
            symmetric=symmetric,
            num_inner_steps=300,
            num_nudged_steps=300,
        )
        actual = flat(meta_gradient(lrn, state, batch)["init"])
        errors.append(np.linalg.norm(actual - exact_hypergradient(theta, batch)))
    assert errors[1] > 1e-12  # The comparison is not between two converged-to-zero numbers.
    np.testing.assert_allclose(errors[0] / errors[1], order, rtol=0.1)


def test_open_es_antithetic_estimate_is_unbiased_on_a_quadratic(x64):
    """Averaged over draws, OpenES's antithetic estimate equals the quadratic's gradient."""
    from evosax.algorithms import Open_ES
    from evosax.core.fitness_shaping import identity_fitness_shaping_fn

    Q = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    target = jnp.array([0.5, -1.0, 2.0])
    mean = jnp.zeros(3)
    es = Open_ES(
        64,
        mean,
        optimizer=optax.sgd(1.0),
        std_schedule=optax.constant_schedule(0.5),
        fitness_shaping_fn=identity_fitness_shaping_fn,
    )
    params = es.default_params

    def estimate(key):
        state = es.init(key, mean, params)
        k_ask, k_tell = jax.random.split(key)
        population, state = es.ask(k_ask, state, params)
        fitness = jax.vmap(lambda p: 0.5 * (p - target) @ Q @ (p - target))(population)
        new_state, _ = es.tell(k_tell, population, fitness, state, params)
        return state.mean - new_state.mean  # sgd(1.0): the estimate itself.

    estimates = jax.vmap(estimate)(jax.random.split(jax.random.key(0), 4000))
    true_grad = Q @ (mean - target)
    standard_error = estimates.std(0) / np.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(0) - true_grad) < 4 * standard_error)


def test_evolution_moves_the_mean_towards_the_optimum():
    """Zero inner steps: the fitness is the query MSE at theta, a quadratic in theta."""
    batch = quadratic_batch(num_tasks=4, dtype=jnp.float32)
    lrn = learner.evolution(
        meta_models.learned_init(nn.linear(1)),
        "Open_ES",
        population_size=32,
        num_inner_steps=0,
        strategy_kwargs={
            "optimizer": optax.adam(0.05),
            "std_schedule": optax.constant_schedule(0.1),
        },
    )
    state = lrn.init(jax.random.key(0), batch)
    zq = np.concatenate([design(batch.query.x[t]) for t in range(4)])
    yq = np.concatenate([np.asarray(batch.query.y[t]) for t in range(4)])
    optimum = np.linalg.lstsq(zq, yq, rcond=None)[0]
    best_loss = float(np.mean((zq @ optimum - yq) ** 2))
    step = jax.jit(lrn.meta_step)
    first_loss, distance_0 = None, np.linalg.norm(flat(state.meta_params["init"]) - optimum)
    for i in range(150):
        state, metrics = step(state, batch, jax.random.key(i))
        first_loss = first_loss if first_loss is not None else float(metrics["outer/loss"])
    distance = np.linalg.norm(flat(state.meta_params["init"]) - optimum)
    assert float(metrics["outer/loss"]) - best_loss < 0.1 * (first_loss - best_loss)
    assert distance < 0.3 * distance_0


@pytest.mark.parametrize(
    "make, meta_model, match",
    [
        (
            learner.implicit,
            lambda: meta_models.learned_init(nn.linear(1)),
            r"\['init'\].*starting point",
        ),
        (learner.eqprop, lambda: meta_models.anil(nn.linear(4), nn.linear(1)), r"\['head_init'\]"),
        (
            learner.reptile,
            lambda: meta_models.anil(nn.linear(4), nn.linear(1)),
            r"\['body'\].*mirror",
        ),
        (learner.reptile, lambda: meta_models.complex_synapse(nn.linear(1)), r"\['log_lambda'\]"),
        (learner.buffered_reptile, lambda: meta_models.learned_init(nn.linear(1)), r"\['init'\]"),
        (learner.implicit, lambda: meta_models.gain_mod(nn.mlp([4], 4), nn.linear(1)), "gain_init"),
    ],
)
def test_incompatible_meta_models_are_refused_with_the_reason(make, meta_model, match):
    with pytest.raises(ValueError, match=match):
        make(meta_model())
