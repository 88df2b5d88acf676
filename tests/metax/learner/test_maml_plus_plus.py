"""Meta-learned inner learning rates (Meta-SGD, MAML++'s LSLR) and MAML++'s multi-step loss:
meta-gradients against finite differences of independently written objectives (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metax import data, learner, meta_models, nn
from tests.helpers.gradcheck import central_differences, meta_gradient

RATE = 0.1


def problem(num_tasks=2):
    model = nn.mlp([4], 1, activation=jnp.tanh)
    sampler = data.sinusoid(num_train_shots=6, num_test_shots=5, amplitude_range=(0.5, 1.5))
    batch = data.sample_meta_batch(sampler, jax.random.key(3), num_tasks)
    return model, jax.tree.map(lambda a: a.astype(jnp.float64), batch)


def mse(model, params, x, y):
    return jnp.mean((model.apply(params, {}, None, x)[0] - y) ** 2)


def reference_objective(model, theta, rates, batch, num_steps, weights=None):
    """Mean over tasks of the query MSE after plain-loop adaptation with per-step rates
    ``rates`` (a tree like ``theta`` with leaves ``(K, ...)``; step k uses ``r[min(k, K - 1)]``),
    or of ``sum_k w_k`` (query MSE after step k)."""

    def task_loss(x, y, xq, yq):
        params, losses = theta, []
        for k in range(num_steps):
            grads = jax.grad(lambda p: mse(model, p, x, y))(params)
            params = jax.tree.map(
                lambda p, g, r: p - r[min(k, r.shape[0] - 1)] * g,  # noqa: B023 (called at once)
                params,
                grads,
                rates,
            )
            losses.append(mse(model, params, xq, yq))
        if weights is None:
            return losses[-1]
        return sum(w * loss for w, loss in zip(weights, losses, strict=True))

    return jnp.mean(
        jax.vmap(task_loss)(batch.support.x, batch.support.y, batch.query.x, batch.query.y)
    )


def check_against_finite_differences(maml, model, batch, num_steps, weights=None):
    state = maml.init(jax.random.key(1), batch)
    # Rates away from their (uniform) initialization, so that a mixed-up index shows.
    lr = jax.tree.map(
        lambda r: r * (1.0 + 0.5 * jnp.arange(r.size).reshape(r.shape) / r.size),
        state.meta_params["lr"],
    )
    state = state._replace(meta_params={**state.meta_params, "lr": lr})
    flat, unravel = ravel_pytree(state.meta_params)

    def objective(vector):
        meta_params = unravel(vector)
        return reference_objective(
            model, meta_params["init"], meta_params["lr"], batch, num_steps, weights
        )

    expected = central_differences(jax.jit(objective), flat)
    gradient = meta_gradient(maml, state, batch)
    np.testing.assert_allclose(ravel_pytree(gradient)[0], expected, rtol=1e-6, atol=1e-9)
    rates_grad = ravel_pytree(gradient["lr"])[0]
    assert np.abs(rates_grad).max() > 1e-3  # The rates are learned.


def test_meta_sgd_per_parameter_rates_match_finite_differences(x64):
    model, batch = problem()
    meta_sgd = learner.maml(
        meta_models.learned_rates(meta_models.learned_init(model), init_rate=RATE),
        learner.learned_sgd(),
        optax.scale(1.0),
        num_inner_steps=2,
    )
    check_against_finite_differences(meta_sgd, model, batch, num_steps=2)


def test_lslr_per_layer_per_step_rates_match_finite_differences(x64):
    # Two learned steps, three inner steps: the third reuses the second step's rates.
    model, batch = problem()
    lslr = learner.maml(
        meta_models.learned_rates(
            meta_models.learned_init(model), per="layer", num_steps=2, init_rate=RATE
        ),
        learner.learned_sgd(),
        optax.scale(1.0),
        num_inner_steps=3,
    )
    state = lslr.init(jax.random.key(1), batch)
    assert jax.tree.map(jnp.shape, state.meta_params["lr"]) == {
        "layer_0": {"w": (2,), "b": (2,)},
        "output": {"w": (2,), "b": (2,)},
    }
    check_against_finite_differences(lslr, model, batch, num_steps=3)


def test_learned_sgd_at_its_initial_rate_is_plain_sgd(x64):
    model, batch = problem()
    meta_model = meta_models.learned_init(model)
    plain = learner.maml(meta_model, optax.sgd(RATE), optax.scale(1.0), num_inner_steps=2)
    learned = learner.maml(
        meta_models.learned_rates(meta_model, init_rate=RATE),
        learner.learned_sgd(),
        optax.scale(1.0),
        num_inner_steps=2,
    )
    state = learned.init(jax.random.key(1), batch)
    plain_state = plain.init(jax.random.key(1), batch)
    np.testing.assert_array_equal(
        ravel_pytree(state.meta_params["init"])[0], ravel_pytree(plain_state.meta_params["init"])[0]
    )
    got = ravel_pytree(meta_gradient(learned, state, batch)["init"])[0]
    want = ravel_pytree(meta_gradient(plain, plain_state, batch)["init"])[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_multi_step_loss_with_all_weight_on_the_last_step_is_maml(x64):
    model, batch = problem(num_tasks=3)
    meta_model = meta_models.learned_init(model)
    plain = learner.maml(meta_model, optax.sgd(RATE), optax.scale(1.0), num_inner_steps=3)
    last = learner.maml(
        meta_model,
        optax.sgd(RATE),
        optax.scale(1.0),
        num_inner_steps=3,
        multi_step_weights=(0.0, 0.0, 1.0),
    )
    state = plain.init(jax.random.key(1), batch)
    got, want = (ravel_pytree(meta_gradient(m, state, batch))[0] for m in (last, plain))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("first_order", [False, True])
def test_multi_step_loss_matches_its_objective(x64, first_order):
    model, batch = problem()
    weights = (0.2, 0.3, 0.5)
    msl = learner.maml(
        meta_models.learned_init(model),
        optax.sgd(RATE),
        optax.scale(1.0),
        num_inner_steps=3,
        first_order=first_order,
        multi_step_weights=weights,
    )
    state = msl.init(jax.random.key(1), batch)
    theta = state.meta_params["init"]
    flat, unravel = ravel_pytree(theta)
    rates = jax.tree.map(lambda p: jnp.full((1,), RATE), theta)
    got = ravel_pytree(meta_gradient(msl, state, batch)["init"])[0]
    if not first_order:
        objective = jax.jit(
            lambda v: reference_objective(model, unravel(v), rates, batch, 3, weights)
        )
        np.testing.assert_allclose(got, central_differences(objective, flat), rtol=1e-6, atol=1e-9)
        return
    # First order: sum_k w_k (query gradient at the k-th adapted parameters), mean over tasks.
    expected = np.zeros_like(flat)
    for t in range(2):
        x, y = batch.support.x[t], batch.support.y[t]
        xq, yq = batch.query.x[t], batch.query.y[t]
        params = theta
        for w in weights:
            grads = jax.grad(mse, argnums=1)(model, params, x, y)
            params = jax.tree.map(lambda p, g: p - RATE * g, params, grads)
            query_grad = jax.grad(mse, argnums=1)(model, params, xq, yq)
            expected += w * ravel_pytree(query_grad)[0] / 2
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)


def test_learned_rates_need_learned_sgd_and_a_learner_that_can_learn_them():
    model, _ = problem()
    meta_sgd = meta_models.learned_rates(meta_models.learned_init(model))
    with pytest.raises(ValueError, match=r"inner optimizer does not read them.*learned_sgd"):
        learner.maml(meta_sgd, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"reptile cannot meta-learn the meta-parameters \['lr'\]"):
        learner.reptile(meta_sgd, learner.learned_sgd())
    regularized = meta_models.learned_rates(meta_models.learned_init(model, reg_strength=1.0))
    with pytest.raises(
        ValueError, match=r"implicit cannot meta-learn the meta-parameters \['lr'\]"
    ):
        learner.implicit(regularized, inner_optimizer=learner.learned_sgd())
    with pytest.raises(ValueError, match="one weight per inner step"):
        learner.maml(meta_models.learned_init(model), num_inner_steps=2, multi_step_weights=(1.0,))
    with pytest.raises(ValueError, match="per must be one of"):
        meta_models.learned_rates(meta_models.learned_init(model), per="step")


def test_per_key_optimizer_updates_each_group_with_its_own_optimizer():
    meta_params = {"init": jnp.ones(3), "lr": jnp.ones(2), "other": jnp.ones(1)}
    grads = jax.tree.map(lambda p: 2.0 * jnp.ones_like(p), meta_params)
    optimizer = learner.per_key_optimizer(optax.sgd(0.1), {"lr": optax.sgd(0.01)})
    updates, _ = optimizer.update(grads, optimizer.init(meta_params), meta_params)
    np.testing.assert_allclose(updates["init"], -0.2)
    np.testing.assert_allclose(updates["other"], -0.2)
    np.testing.assert_allclose(updates["lr"], -0.02)


def tiny_images(num_tasks=2, dtype=jnp.float64):
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 4, 1), dtype=np.uint8)
    batch = data.sample_meta_batch(
        data.fewshot(images, data.Episodes(ways=3, shots=2, queries=2)),
        jax.random.key(0),
        num_tasks,
    )
    return jax.tree.map(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, batch)


def test_per_step_batch_norm_with_one_step_is_plain_batch_norm(x64):
    x = tiny_images().support.x[0]
    plain, per_step = nn.conv4(3, 2), nn.conv4(3, 2, per_step_batch_norm=1)
    params, state = plain.init(jax.random.key(0), x)
    params_1, state_1 = per_step.init(jax.random.key(0), x)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_1), strict=True):
        np.testing.assert_array_equal(a, b.reshape(a.shape))
    for is_training in (True, False):
        out, new = plain.apply(params, state, None, x, is_training=is_training)
        out_1, new_1 = per_step.apply(params_1, state_1, None, x, is_training=is_training)
        np.testing.assert_array_equal(out, out_1)
        for name in ("block_0", "block_1"):
            for stat in ("mean", "var"):
                np.testing.assert_array_equal(new[name][stat], new_1[name][stat][0])
        assert int(new_1["step"]) == int(is_training)


def test_per_step_batch_norm_uses_row_k_at_step_k_and_the_last_row_after(x64):
    x = tiny_images().support.x[0]
    per_step = nn.conv4(3, 1, per_step_batch_norm=2)
    params, state = per_step.init(jax.random.key(0), x)
    params["block_0"]["bn"]["scale"] = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    plain = nn.conv4(3, 1)
    rows = []
    for _ in range(3):
        out, state = per_step.apply(params, state, None, x, is_training=True)
        rows.append(out)
    for used, out in zip((0, 1, 1), rows, strict=True):
        bn = {key: value[used] for key, value in params["block_0"]["bn"].items()}
        row = {**params["block_0"], "bn": bn}
        want, _ = plain.apply({"block_0": row}, {"block_0": {"mean": 0, "var": 1}}, None, x)
        np.testing.assert_allclose(out, want, rtol=1e-12)
    assert int(state["step"]) == 3
    # Row 0's running statistics were updated once (step 0), row 1's twice (steps 1 and 2).
    mean_0 = state["block_0"]["mean"][0]
    assert np.abs(mean_0).max() > 0 and not np.allclose(mean_0, state["block_0"]["mean"][1])


def test_maml_with_per_step_batch_norm_matches_finite_differences(x64):
    from metax import energy
    from tests.helpers.gradcheck import finite_difference_meta_gradient

    model = nn.sequential(
        body=nn.conv4(2, 1, pooling="strided", per_step_batch_norm=2), head=nn.linear(3)
    )
    batch = tiny_images()
    maml = learner.maml(
        meta_models.learned_init(model, energy.cross_entropy, batch_norm="per_task"),
        optax.sgd(0.3),
        optax.scale(1.0),
        num_inner_steps=2,
    )
    state = maml.init(jax.random.key(1), batch)
    gradient = meta_gradient(maml, state, batch)
    got = ravel_pytree(gradient)[0]
    expected = finite_difference_meta_gradient(maml, state, batch, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    # Both rows of the BatchNorm weights get gradient: each inner step has its own.
    bn_grad = gradient["init"]["body"]["block_0"]["bn"]["scale"]
    assert np.all(np.abs(np.asarray(bn_grad)).sum(1) > 0)
