"""The five meta-models: what adapts, what is meta-learned, exact meta-gradients, BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metax import data, energy, learner, meta_models, nn
from metax.data import Dataset, MetaBatch
from tests.helpers.gradcheck import (
    finite_difference_meta_gradient,
    meta_gradient,
    sinusoid_mse_before_and_after,
)


def tanh_mlp(out, activate_final=False):
    return nn.mlp([4], out, activation=jnp.tanh, activate_final=activate_final)


# name -> (meta-model, inner learning rate, task-param keys, meta-param keys)
META_MODELS = {
    "learned_init": (lambda: meta_models.learned_init(tanh_mlp(1)), 0.1, None, {"init"}),
    "anil": (
        lambda: meta_models.anil(tanh_mlp(4, activate_final=True), nn.linear(1)),
        0.1,
        {"head"},
        {"body", "head_init"},
    ),
    "cavia": (
        lambda: meta_models.cavia(tanh_mlp(1), embedding_dim=2),
        0.5,
        {"context"},
        {"network"},
    ),
    "complex_synapse": (
        lambda: meta_models.complex_synapse(tanh_mlp(1), log_strength_init=-1.0),
        0.1,
        None,
        {"omega", "log_lambda"},
    ),
    "gain_mod": (
        lambda: meta_models.gain_mod(
            tanh_mlp(4, activate_final=True), nn.linear(1), reg_strength=0.1
        ),
        0.1,
        {"gain", "shift", "head"},
        {"body", "gain_init", "shift_init", "head_init"},
    ),
}


def sinusoid_batch(num_tasks=3, dtype=jnp.float32):
    sampler = data.sinusoid(num_train_shots=6, num_test_shots=5, amplitude_range=(0.5, 1.5))
    batch = data.sample_meta_batch(sampler, jax.random.key(3), num_tasks)
    return jax.tree.map(lambda a: a.astype(dtype), batch)


def build(name, num_steps=2, **kwargs):
    factory, lr, _, _ = META_MODELS[name]
    meta_model = factory()
    maml = learner.maml(
        meta_model, optax.sgd(lr), optax.scale(1.0), num_inner_steps=num_steps, **kwargs
    )
    return meta_model, maml


@pytest.mark.parametrize("name", list(META_MODELS))
def test_adaptation_changes_exactly_the_task_parameters(name):
    meta_model, maml = build(name)
    batch = sinusoid_batch()
    state = maml.init(jax.random.key(0), batch)
    _, _, task_keys, meta_keys = META_MODELS[name]
    assert set(state.meta_params) == meta_keys
    task = jax.tree.map(lambda a: a[0], batch)
    params_0, model_state = meta_model.reset(
        jax.random.key(1), state.meta_params, state.model_state
    )
    if task_keys is not None:
        assert set(params_0) == task_keys
    lr = META_MODELS[name][1]
    params, *_ = learner.run_inner_loop(
        meta_model.inner_energy,
        learner.InnerLoop(optax.sgd(lr), 2),
        state.meta_params,
        params_0,
        model_state,
        jax.random.key(2),
        task.support,
    )
    assert jax.tree.structure(params) == jax.tree.structure(params_0)
    for before, after in zip(jax.tree.leaves(params_0), jax.tree.leaves(params), strict=True):
        assert before.shape == after.shape and np.abs(after - before).max() > 0
    predictions, _ = meta_model.apply(
        state.meta_params, params, model_state, jax.random.key(3), task.query.x, is_training=True
    )
    assert predictions.shape == task.query.y.shape


@pytest.mark.parametrize("name", list(META_MODELS))
def test_every_meta_learned_leaf_gets_a_meta_gradient(name):
    _, maml = build(name)
    batch = sinusoid_batch()
    state = maml.init(jax.random.key(0), batch)
    grads = meta_gradient(maml, state, batch)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert np.abs(leaf).max() > 1e-6, jax.tree_util.keystr(path)


def test_complex_synapse_strength_gets_no_gradient_after_one_step_from_omega():
    _, maml = build("complex_synapse", num_steps=1)
    batch = sinusoid_batch()
    grads = meta_gradient(maml, maml.init(jax.random.key(0), batch), batch)
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(grads["log_lambda"]))
    assert all(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(grads["omega"]))


def test_cavia_context_weights_get_no_gradient_without_adaptation():
    """With zero inner steps the context stays zero, so the first layer's context rows do not
    affect the output: their meta-gradient is exactly zero; the input rows' is not."""
    _, maml = build("cavia", num_steps=0)
    batch = sinusoid_batch()
    grads = meta_gradient(maml, maml.init(jax.random.key(0), batch), batch)
    first = grads["network"]["layer_0"]["w"]  # (1 input + 2 context, 4)
    assert np.all(first[1:] == 0) and np.abs(first[0]).max() > 0


def test_gain_mod_without_head_adaptation_meta_learns_the_head():
    meta_model = meta_models.gain_mod(
        tanh_mlp(4, activate_final=True), nn.linear(1), adapt_head=False
    )
    maml = learner.maml(meta_model, optax.sgd(0.1), optax.scale(1.0), num_inner_steps=2)
    batch = sinusoid_batch()
    state = maml.init(jax.random.key(0), batch)
    assert set(state.meta_params) == {"body", "gain_init", "shift_init", "head"}
    params, _ = meta_model.reset(None, state.meta_params, state.model_state)
    assert set(params) == {"gain", "shift"}
    grads = meta_gradient(maml, state, batch)
    assert np.abs(grads["head"]["w"]).max() > 0


@pytest.mark.parametrize("name", list(META_MODELS))
def test_second_order_meta_gradient_matches_finite_differences(x64, name):
    meta_model, maml = build(name)
    batch = sinusoid_batch(dtype=jnp.float64)
    state = maml.init(jax.random.key(0), batch)
    expected = finite_difference_meta_gradient(maml, state, batch, num_inner_steps=2)
    actual, _ = ravel_pytree(meta_gradient(maml, state, batch))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-9)


def test_conv_gain_mod_with_batch_norm_matches_finite_differences(x64):
    body = nn.conv4(num_channels=2, num_blocks=1)
    meta_model = meta_models.gain_mod(body, nn.linear(3), loss_fn=energy.cross_entropy)
    maml = learner.maml(meta_model, optax.sgd(0.5), optax.scale(1.0), num_inner_steps=2)
    batch = image_batch(jnp.float64)
    state = maml.init(jax.random.key(0), batch)
    expected = finite_difference_meta_gradient(maml, state, batch, num_inner_steps=2)
    actual, _ = ravel_pytree(meta_gradient(maml, state, batch))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-8)


def test_gain_mod_on_resnet12_modulates_each_block_and_matches_finite_differences(x64):
    """ResNet-12 declares where it can be modulated (its blocks' outputs, shared name prefix
    'block_' with conv4 notwithstanding): gain_mod builds on it, identity modulation is the
    plain network, and MAML's meta-gradient through it matches finite differences."""
    body = nn.resnet12((2, 2, 2, 3))
    assert body.modulation(None) == {
        "block_0": (2,),
        "block_1": (2,),
        "block_2": (2,),
        "block_3": (3,),
    }
    meta_model = meta_models.gain_mod(body, nn.linear(3), loss_fn=energy.cross_entropy)
    # (An inner rate of 0.5 puts a max-pool tie within the finite differences' 1e-6 here.)
    maml = learner.maml(meta_model, optax.sgd(0.1), optax.scale(1.0), num_inner_steps=1)
    batch = image_batch(jnp.float64, num_tasks=1, side=16)  # 16 -> 8 -> 4 -> 2 -> 1 pixels.
    state = maml.init(jax.random.key(0), batch)
    assert {k: v.shape for k, v in state.meta_params["gain_init"].items()} == {
        "block_0": (2,), "block_1": (2,), "block_2": (2,), "block_3": (3,)
    }  # fmt: skip
    x = batch.support.x[0]
    body_params = state.meta_params["body"]
    plain, _ = body.apply(body_params, state.model_state["body"], None, x)
    params, _ = meta_model.reset(None, state.meta_params, state.model_state)
    identity, _ = body.apply(
        body_params, state.model_state["body"], None, x, gain=params["gain"], shift=params["shift"]
    )
    np.testing.assert_array_equal(identity, plain)
    off = {**params["gain"], "block_3": jnp.zeros(3)}  # The last block's output is zeroed.
    silenced, _ = body.apply(body_params, state.model_state["body"], None, x, gain=off)
    np.testing.assert_array_equal(silenced, 0.0)
    expected = finite_difference_meta_gradient(maml, state, batch, num_inner_steps=1)
    actual, _ = ravel_pytree(meta_gradient(maml, state, batch))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-8)


def test_gain_mod_refuses_a_body_that_declares_no_modulation():
    with pytest.raises(ValueError, match="gain_mod needs a body that declares where it can be"):
        meta_models.gain_mod(nn.sequential(flat=nn.flatten(), mlp=nn.mlp([4], 4)), nn.linear(1))


def image_batch(dtype=jnp.float32, num_tasks=2, ways=3, shots=2, queries=2, side=6):
    keys = jax.random.split(jax.random.key(5), 2)
    labels_train = jnp.tile(jnp.arange(ways), shots)
    labels_test = jnp.tile(jnp.arange(ways), queries)
    x_train = jax.random.normal(keys[0], (num_tasks, ways * shots, side, side, 1), dtype)
    x_test = jax.random.normal(keys[1], (num_tasks, ways * queries, side, side, 1), dtype)
    x_train = x_train + labels_train[None, :, None, None, None]  # Separable classes.
    x_test = x_test + labels_test[None, :, None, None, None]
    y_train = jnp.broadcast_to(labels_train, (num_tasks, ways * shots))
    y_test = jnp.broadcast_to(labels_test, (num_tasks, ways * queries))
    return MetaBatch(Dataset(x_train, y_train, {}), Dataset(x_test, y_test, {}))


def test_anil_adapted_head_matches_closed_form(x64):
    """A linear head on a fixed body is linear regression on features F: K GD steps give
    phi_{k+1} = phi_k - alpha (A phi_k - c), A = (2/n) Z^T Z, c = (2/n) Z^T y, Z = [F, 1]."""
    body = tanh_mlp(4, activate_final=True)
    meta_model = meta_models.anil(body, nn.linear(1))
    task = jax.tree.map(lambda a: a[0], sinusoid_batch(dtype=jnp.float64))
    meta_params, meta_state = meta_model.init(jax.random.key(0), task.support.x)
    params_0, _ = meta_model.reset(None, meta_params, meta_state)
    alpha, steps = 0.3, 4
    params, *_ = learner.run_inner_loop(
        meta_model.inner_energy,
        learner.InnerLoop(optax.sgd(alpha), steps),
        meta_params,
        params_0,
        meta_state,
        jax.random.key(1),
        task.support,
    )
    features, _ = body.apply(meta_params["body"], {}, None, task.support.x)
    z = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    A, c = 2 / len(z) * z.T @ z, 2 / len(z) * z.T @ np.asarray(task.support.y)
    phi = np.concatenate([params_0["head"]["w"], params_0["head"]["b"][:, None]])
    for _ in range(steps):
        phi = phi - alpha * (A @ phi - c)
    np.testing.assert_allclose(params["head"]["w"], phi[:-1], rtol=1e-10)
    np.testing.assert_allclose(params["head"]["b"], phi[-1], rtol=1e-10)


def test_cavia_adapted_context_matches_closed_form(x64):
    """With a linear readout y = x w_x + context . w_c + b the inner problem is linear in the
    context: c_{k+1} = c_k - alpha (A c_k + g), A = 2 w_c w_c^T, g = (2/n) sum_i w_c r_i with
    r_i = x_i w_x + b - y_i."""
    meta_model = meta_models.cavia(nn.linear(1), embedding_dim=3)
    task = jax.tree.map(lambda a: a[0], sinusoid_batch(dtype=jnp.float64))
    meta_params, meta_state = meta_model.init(jax.random.key(0), task.support.x)
    params_0, _ = meta_model.reset(None, meta_params, meta_state)
    np.testing.assert_array_equal(params_0["context"], 0.0)
    alpha, steps = 0.2, 5
    params, *_ = learner.run_inner_loop(
        meta_model.inner_energy,
        learner.InnerLoop(optax.sgd(alpha), steps),
        meta_params,
        params_0,
        meta_state,
        jax.random.key(1),
        task.support,
    )
    w = np.asarray(meta_params["network"]["w"])
    w_x, w_c, b = w[:1], w[1:], np.asarray(meta_params["network"]["b"])
    x, y = np.asarray(task.support.x), np.asarray(task.support.y)
    A = 2 * w_c @ w_c.T
    g = 2 * w_c @ np.mean(x @ w_x + b - y, axis=0, keepdims=True)
    context = np.zeros((3, 1))
    for _ in range(steps):
        context = context - alpha * (A @ context + g)
    np.testing.assert_allclose(params["context"], context[:, 0], rtol=1e-10)


# BatchNorm semantics, with conv4 + linear head under learned_init.
def conv_learner(batch_norm):
    model = nn.sequential(body=nn.conv4(num_channels=4, num_blocks=2), head=nn.linear(3))
    meta_model = meta_models.learned_init(
        model, loss_fn=energy.cross_entropy, batch_norm=batch_norm
    )
    return meta_model, learner.maml(meta_model, optax.sgd(0.1), optax.adam(1e-2))


@pytest.mark.parametrize("batch_norm", meta_models.BATCH_NORM_MODES)
def test_batch_norm_state_never_flows_into_the_meta_state(batch_norm):
    _, maml = conv_learner(batch_norm)
    batch = image_batch(num_tasks=4)
    state = maml.init(jax.random.key(0), batch)
    new_state, _ = jax.jit(maml.meta_step)(state, batch, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, new_state.model_state, state.model_state)
    assert not np.allclose(
        new_state.meta_params["init"]["head"]["w"], state.meta_params["init"]["head"]["w"]
    )


@pytest.mark.parametrize("batch_norm", meta_models.BATCH_NORM_MODES)
def test_batch_norm_does_not_leak_across_tasks(batch_norm):
    """Replacing task 0 of a batch leaves task 1's result bitwise unchanged."""
    _, maml = conv_learner(batch_norm)
    batch = image_batch(num_tasks=2)
    state = maml.init(jax.random.key(0), batch)
    other = MetaBatch(
        *(d._replace(x=d.x.at[0].set(3.0 * d.x[0][::-1])) for d in (batch.support, batch.query))
    )
    evaluate = jax.jit(maml.evaluate, static_argnums=3)
    original = evaluate(state, batch, jax.random.key(1), 2)
    replaced = evaluate(state, other, jax.random.key(1), 2)
    assert original["loss"][0] != replaced["loss"][0]
    assert original["loss"][1] == replaced["loss"][1]


@pytest.mark.parametrize("batch_norm, transductive", [("transductive", True), ("per_task", False)])
def test_query_predictions_depend_on_other_query_samples_only_when_transductive(
    batch_norm, transductive
):
    meta_model, maml = conv_learner(batch_norm)
    batch = image_batch(num_tasks=1)
    state = maml.init(jax.random.key(0), batch)
    task = jax.tree.map(lambda a: a[0], batch)
    params, model_state = meta_model.reset(None, state.meta_params, state.model_state)
    params, model_state, *_ = learner.run_inner_loop(
        meta_model.inner_energy,
        learner.InnerLoop(optax.sgd(0.1), 1),
        state.meta_params,
        params,
        model_state,
        jax.random.key(1),
        task.support,
    )
    # Per-task running statistics moved away from the meta-state during adaptation.
    assert not np.allclose(model_state["body"]["block_0"]["mean"], 0.0)

    def query_logits(x):
        # What the outer energy computes: its predictions for the query set x.
        predictions = []
        loss_fn = lambda logits, labels: (predictions.append(logits) or 0.0, {})  # noqa: E731
        energy_model = meta_models.learned_init(
            nn.sequential(body=nn.conv4(num_channels=4, num_blocks=2), head=nn.linear(3)),
            loss_fn=loss_fn,
            batch_norm=batch_norm,
        )
        energy_model.outer_energy(
            state.meta_params, params, model_state, jax.random.key(2), Dataset(x, task.query.y, {})
        )
        return predictions[0]

    x = task.query.x
    changed = x.at[1:].multiply(3.0)
    first_unchanged = np.allclose(query_logits(x)[0], query_logits(changed)[0], rtol=1e-6)
    assert first_unchanged != transductive


def test_unknown_batch_norm_mode_is_rejected():
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        meta_models.learned_init(nn.linear(1), batch_norm="running")


def test_cavia_rejects_image_inputs_with_a_clear_error():
    meta_model = meta_models.cavia(nn.linear(1))
    with pytest.raises(ValueError, match="cavia appends its context to flat inputs"):
        meta_model.init(jax.random.key(0), jnp.zeros((4, 6, 6, 1)))


@pytest.mark.parametrize(
    "name, lr, threshold",
    [
        ("anil", 0.01, 0.6),
        ("cavia", 1.0, 0.4),
        ("complex_synapse", 0.01, 0.4),
        ("gain_mod", 0.01, 0.4),
    ],
)
def test_meta_model_learns_sinusoid_with_maml(name, lr, threshold):
    """Post-adaptation query MSE on held-out tasks after 1,500 meta-steps is below
    ``threshold`` times its value at initialization."""
    relu = dict(activation=jax.nn.relu)
    meta_model = {
        "anil": lambda: meta_models.anil(
            nn.mlp([40], 40, activate_final=True, **relu), nn.linear(1)
        ),
        "cavia": lambda: meta_models.cavia(nn.mlp([40, 40], 1, **relu), embedding_dim=5),
        "complex_synapse": lambda: meta_models.complex_synapse(
            nn.mlp([40, 40], 1, **relu), log_strength_init=-4.0
        ),
        "gain_mod": lambda: meta_models.gain_mod(
            nn.mlp([40], 40, activate_final=True, **relu), nn.linear(1)
        ),
    }[name]()
    maml = learner.maml(meta_model, optax.sgd(lr), optax.adam(1e-3), num_inner_steps=1)
    before, after = sinusoid_mse_before_and_after(maml, steps=1500)
    assert after < threshold * before, (before, after)
