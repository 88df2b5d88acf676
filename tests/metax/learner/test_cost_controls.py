"""Cost controls give the same meta-gradient (remat, task chunks), truncated backpropagation
has its closed form, and a run compiles its meta-step once."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metax import data, energy, learner, meta_models, nn
from metax.learner import inner
from metax.train import sharding
from tests.helpers.gradcheck import (
    ALPHA,
    closed_form_maml_gradient,
    linear_regression_batch,
    meta_gradient,
)
from tests.helpers.runs import check_regression_figure

# The event JAX records once per XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def tanh_maml(outer=None, **kwargs):
    return learner.maml(
        meta_models.learned_init(nn.mlp([16, 16], 1, activation=jnp.tanh)),
        optax.sgd(0.05),
        outer or optax.scale(1.0),
        **kwargs,
    )


def conv_maml(**kwargs):
    body = nn.conv4(num_channels=3, num_blocks=2, pooling="max")
    model = nn.sequential(body=body, head=nn.linear(3))
    return learner.maml(
        meta_models.learned_init(model, loss_fn=energy.cross_entropy),
        optax.sgd(0.4),
        optax.scale(1.0),
        **kwargs,
    )


def image_batch(num_tasks=8):
    images = np.random.default_rng(0).integers(0, 256, (10, 6, 8, 8, 1), dtype=np.uint8)
    sampler = data.fewshot(images, data.Episodes(ways=3, shots=2, queries=2))
    batch = data.sample_meta_batch(sampler, jax.random.key(0), num_tasks)
    # In float64 when x64 is on (the sampler scales uint8 images to float32).
    return jax.tree.map(lambda x: x.astype(float) if x.dtype == jnp.float32 else x, batch)


def test_remat_gives_the_same_meta_gradient(x64):
    batch = data.sample_meta_batch(data.sinusoid(), jax.random.key(1), 4)
    plain = tanh_maml(num_inner_steps=3)
    state = plain.init(jax.random.key(0), batch)
    expected = flat(meta_gradient(plain, state, batch))
    actual = flat(meta_gradient(tanh_maml(num_inner_steps=3, remat=True), state, batch))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-12)


def test_truncated_backprop_has_its_closed_form(x64):
    """Linear regression, K = 4 SGD steps: backpropagating through the last T steps gives
    (I - alpha A)^T times the outer gradient; T = K is exact MAML, T = 0 first-order MAML."""
    batch, num_steps = linear_regression_batch(), 4

    def maml(**kwargs):
        return learner.maml(
            meta_models.learned_init(nn.linear(1)),
            optax.sgd(ALPHA),
            optax.scale(1.0),
            num_inner_steps=num_steps,
            **kwargs,
        )

    state = maml().init(jax.random.key(1), batch)
    params = state.meta_params["init"]
    theta = np.concatenate([np.asarray(params["w"]), np.asarray(params["b"])[:, None]])
    for steps in range(num_steps + 1):
        expected = closed_form_maml_gradient(theta, batch, num_steps, False, steps)
        grads = meta_gradient(maml(backprop_steps=steps), state, batch)["init"]
        actual = np.concatenate([np.asarray(grads["w"]), np.asarray(grads["b"])[:, None]])
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)
    exact = flat(meta_gradient(maml(), state, batch))
    first = flat(meta_gradient(maml(first_order=True), state, batch))
    np.testing.assert_allclose(flat(meta_gradient(maml(backprop_steps=4), state, batch)), exact)
    np.testing.assert_allclose(flat(meta_gradient(maml(backprop_steps=0), state, batch)), first)
    with pytest.raises(ValueError, match="backprop_steps must be in"):
        maml(backprop_steps=5)


def test_tasks_one_at_a_time_give_the_same_meta_step_and_evaluation():
    batch = image_batch(num_tasks=4)
    plain = conv_maml(num_inner_steps=1, task_chunk=None)
    chunked = conv_maml(num_inner_steps=1, task_chunk=1)
    state = plain.init(jax.random.key(0), batch)
    np.testing.assert_allclose(
        flat(meta_gradient(chunked, state, batch)),
        flat(meta_gradient(plain, state, batch)),
        rtol=1e-5,
        atol=1e-6,
    )
    expected = jax.jit(plain.evaluate, static_argnums=3)(state, batch, jax.random.key(2), 1)
    actual = jax.jit(chunked.evaluate, static_argnums=3)(state, batch, jax.random.key(2), 1)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-6)


def dot_generals(jaxpr):
    """Every dot_general equation of ``jaxpr`` and of the jaxprs it calls (scans, jits)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # A ClosedJaxpr holds its Jaxpr.
                if hasattr(sub, "eqns"):
                    yield from dot_generals(sub)


def test_one_task_at_a_time_runs_plain_two_dimensional_matmuls():
    # What makes conv4 fast on XLA:CPU (README, Performance): a chunk of one task is not a
    # vmap of size 1 (whose batch axis of 1 XLA keeps, in slower batched dots), and im2col
    # multiplies 2-D patches (with several contracted axes XLA transposes the activation
    # gradient of the weight-gradient dot first). Checked on the traced meta-step, whose
    # derivatives are what XLA compiles.
    batch = image_batch(num_tasks=4)
    maml = conv_maml(num_inner_steps=1, task_chunk=1)
    state = maml.init(jax.random.key(0), batch)
    jaxpr = jax.make_jaxpr(maml.meta_step)(state, batch, jax.random.key(1)).jaxpr
    dims = [eqn.params["dimension_numbers"] for eqn in dot_generals(jaxpr)]
    assert len(dims) > 20  # Forward, backward and second-order products of 3 layers.
    for (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) in dims:
        assert lhs_batch == rhs_batch == ()
        assert len(lhs_contracting) == len(rhs_contracting) == 1


def learners_of_each_meta_step(task_chunk):
    """The averaged per-task meta-gradient (reptile, buffered Reptile, implicit and eqprop
    share it; maml is tested above) and evolution's population of task maps."""
    mlp = nn.mlp([8], 1, activation=jnp.tanh)
    return {
        "implicit": learner.implicit(
            meta_models.learned_init(mlp, reg_strength=1.0),
            learner.conjugate_gradient(3),
            optax.sgd(0.05),
            num_inner_steps=3,
            task_chunk=task_chunk,
        ),
        "evolution": learner.evolution(
            meta_models.learned_init(mlp), population_size=4, task_chunk=task_chunk
        ),
    }


def test_every_learner_gives_the_same_step_whichever_task_strategy():
    batch = data.sample_meta_batch(data.sinusoid(), jax.random.key(1), 4)
    vmapped, chunked = learners_of_each_meta_step(None), learners_of_each_meta_step(2)
    for name, plain in vmapped.items():
        state = plain.init(jax.random.key(0), batch)
        expected, expected_metrics = jax.jit(plain.meta_step)(state, batch, jax.random.key(2))
        actual, metrics = jax.jit(chunked[name].meta_step)(state, batch, jax.random.key(2))
        np.testing.assert_allclose(
            flat(actual.meta_params), flat(expected.meta_params), rtol=1e-5, atol=1e-7, err_msg=name
        )
        for key in expected_metrics:
            np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=1e-5, err_msg=key)


def test_auto_task_strategy_runs_conv_models_one_task_per_device_on_cpu():
    conv_params = {"w": jnp.zeros((3, 3, 1, 4)), "b": jnp.zeros(4)}
    mlp_params = {"w": jnp.zeros((1, 4)), "b": jnp.zeros(4)}
    assert jax.default_backend() == "cpu" and jax.device_count() == 8
    assert inner.resolve_task_chunk("auto", 32, conv_params) == 8
    assert inner.resolve_task_chunk("auto", 4, conv_params) == 4
    assert inner.resolve_task_chunk("auto", 32, mlp_params) is None
    assert inner.resolve_task_chunk(None, 32, conv_params) is None
    assert inner.resolve_task_chunk(2, 32, mlp_params) == 2
    for bad in (0, -1, "vmap", 1.5, True):
        with pytest.raises(ValueError, match="task_chunk must be None"):
            learner.maml(meta_models.learned_init(nn.linear(1)), task_chunk=bad)


def test_task_chunks_under_sharding_equal_one_device(x64):
    batch = image_batch(num_tasks=16)
    maml = conv_maml(num_inner_steps=1, task_chunk=8)
    state = maml.init(jax.random.key(0), batch)
    results = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = sharding.task_mesh(devices)
        step = sharding.jit_meta_step(maml, mesh)
        placed = jax.device_put(jax.tree.map(jnp.copy, state), sharding.replicated(mesh))
        new_state, _ = step(placed, sharding.shard_meta_batch(batch, mesh), jax.random.key(1))
        results.append(flat(new_state.meta_params))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-14)


def test_a_run_compiles_its_meta_step_once(tmp_path):
    """40 steps, 8 metric fetches and 4 evaluations cost 6 XLA compilations: nothing is
    recompiled per step, per metric fetch or per evaluation."""
    import gin

    from metax.train import Checkpoints, Evaluation, TrainConfig, train

    compilations = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            compilations.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    # The suite's persistent compilation cache (conftest) would serve these programs without
    # compiling them: count real compilations.
    cache_enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)

    def count(num_steps, workdir):
        before = len(compilations)
        with gin.unlock_config():
            config = TrainConfig(
                learner=tanh_maml(optax.adam(1e-3), num_inner_steps=1),
                train_sampler=data.sinusoid(),
                meta_batch_size=8,
                num_steps=num_steps,
                log_every=5,
                evaluation=Evaluation(every=10, num_tasks=8, inner_steps=(1, 2)),
                checkpoints=Checkpoints(every=num_steps),
            )
            train(config, str(workdir))
        return len(compilations) - before

    try:
        count(2, tmp_path / "warm-up")  # Eager operations compile once per process.
        compiled = count(40, tmp_path / "run")
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        jax.config.update("jax_enable_compilation_cache", cache_enabled)
    # Per run of 40 steps and 4 evaluations: init, the meta-step, one evaluation per
    # inner-step count, the first episode, the regression figure's predictions.
    assert compiled == 6
    check_regression_figure(tmp_path / "run")
