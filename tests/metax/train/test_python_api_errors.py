"""From Python, no silent failure (tried as a researcher using `make_train_step` and the
learners directly): a diverged step raises naming it, and data that does not fit the model is
refused at the first call with one clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metax import data, energy, learner, meta_models, nn
from metax.data import Dataset, MetaBatch
from metax.train import make_train_step, sharding
from metax.train.step import NONFINITE, NonfiniteStepError


def maml(inner_lr=0.01, outer_lr=1e-3):
    return learner.maml(
        meta_models.learned_init(nn.mlp([8], 1)),
        optax.sgd(inner_lr),
        optax.adam(outer_lr),
        num_inner_steps=1,
    )


@pytest.mark.parametrize(
    "rates", [(0.01, float("nan")), (float("nan"), 1e-3)], ids=["outer", "inner"]
)
def test_a_nan_learning_rate_raises_naming_the_step_and_keeps_the_last_finite_state(rates):
    mesh = sharding.task_mesh()
    init, train_step = make_train_step(maml(*rates), data.sinusoid(), 8, mesh, seed=0)
    state = init()
    before = jax.device_get(state.meta_params)
    with pytest.raises(
        NonfiniteStepError, match="at meta-step 1: the update was not applied"
    ) as error:
        train_step(state)
    kept = jax.device_get(error.value.state.meta_params)
    jax.tree.map(np.testing.assert_array_equal, kept, before)
    # Skipping instead, the step says so in its metrics.
    init, skipping = make_train_step(maml(*rates), data.sinusoid(), 8, mesh, 0, on_nonfinite="skip")
    _, metrics = skipping(init())
    assert float(metrics[NONFINITE]) == 1.0


def test_labels_beyond_the_model_outputs_are_refused_before_compiling():
    images = np.random.default_rng(0).integers(0, 256, (12, 6, 8, 8, 1), dtype=np.uint8)
    sampler = data.fewshot(images, data.Episodes(ways=5, shots=1, queries=2))
    three_outputs = nn.sequential(flat=nn.flatten(), mlp=nn.mlp([8], 3))
    maml3 = learner.maml(meta_models.learned_init(three_outputs, energy.cross_entropy))
    with pytest.raises(ValueError, match="5-way classification"):
        make_train_step(maml3, sampler, 8, sharding.task_mesh(), seed=0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        energy.cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 4]))


def sinusoid_batch(num_tasks=2) -> MetaBatch:
    return data.sample_meta_batch(data.sinusoid(), jax.random.key(0), num_tasks)


def test_float64_data_without_64_bit_mode_is_refused():
    batch = jax.tree.map(lambda a: np.asarray(a, np.float64), sinusoid_batch())
    with pytest.raises(ValueError, match=r"float64 arrays \(.*\), but JAX computes in float32"):
        maml().init(jax.random.key(0), batch)


def test_a_query_set_of_another_shape_than_the_support_set_is_refused():
    batch = sinusoid_batch()
    wider = batch._replace(query=batch.query._replace(x=jnp.zeros((2, 10, 3))))
    with pytest.raises(ValueError, match="support and query sets' inputs differ in shape"):
        maml().init(jax.random.key(0), wider)


def test_adapt_refuses_a_support_set_with_a_task_axis():
    batch = sinusoid_batch()
    model = maml()
    state = model.init(jax.random.key(0), batch)
    with pytest.raises(ValueError, match="Has it a task axis"):
        model.adapt(state, batch.support, jax.random.key(1), 1)
    one = jax.tree.map(lambda a: a[0], batch.support)
    params, _ = model.adapt(state, Dataset(one.x, one.y, one.info), jax.random.key(1), 1)
    assert params["output"]["w"].shape == (8, 1)
