"""Gradients of conv models in float64 under `jax.jit`: equal to the un-jitted ones and to
finite differences, for conv4 with 64 channels, max-pooled and strided, BatchNorm with batch
and with running statistics; MAML's meta-gradients second and first order likewise.

Why these tolerances: jit and op-by-op execution compute the same sums with different
fusion and code generation (FMA or not, vector widths), so they agree to float64 rounding
amplified by a few layers: about 1e-14 relative here. A window whose gradient is lost (what
`jnp.max`'s gradient did under jit on AVX-512 and AVX2 CPUs: 0.02-0.4 relative error) changes
the gradient by about one part in the number of windows, 1e-4 here or more, so 1e-8 catches
it with margin on any CPU. Central differences of step 1e-5 are exact to ~1e-9 for a smooth
function; 1e-6 leaves room for a ReLU or max kink crossed inside the step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metax import data, energy, learner, meta_models, nn
from tests.helpers.gradcheck import assert_directional_derivatives, relative_error

WAYS, SHOTS, QUERIES, TASKS = 3, 1, 2, 2


@pytest.mark.parametrize("is_training", [True, False], ids=["batch_stats", "running_stats"])
@pytest.mark.parametrize("pooling", ["max", "strided"])
def test_conv4_gradient_under_jit_equals_unjitted_and_finite_differences(x64, pooling, is_training):
    model = nn.sequential(
        body=nn.conv4(num_channels=64, num_blocks=1, pooling=pooling), head=nn.linear(5)
    )
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 1))
    labels = jnp.array([1, 3])
    params, state = model.init(jax.random.key(1), x)
    # Running statistics away from the batch's, so that the two BatchNorm modes differ.
    state = jax.tree.map(lambda s: s + 0.3, state)
    flat, unravel = ravel_pytree(params)

    def loss(vector):
        logits, _ = model.apply(
            unravel(vector), state, jax.random.key(2), x, is_training=is_training
        )
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    jitted = np.asarray(jax.jit(jax.grad(loss))(flat))
    unjitted = np.asarray(jax.grad(loss)(flat))
    assert np.all(np.isfinite(jitted))
    assert relative_error(jitted, unjitted) < 1e-8
    assert_directional_derivatives(jax.jit(loss), flat, jitted)


def conv_maml(pooling, batch_norm, first_order):
    body = nn.conv4(num_channels=64, num_blocks=1, pooling=pooling)
    model = nn.sequential(body=body, head=nn.linear(WAYS))
    meta_model = meta_models.learned_init(
        model, loss_fn=energy.cross_entropy, batch_norm=batch_norm
    )
    return learner.maml(
        meta_model,
        optax.sgd(0.5),
        optax.scale(1.0),  # new - old meta-parameters = the meta-gradient.
        num_inner_steps=1,
        first_order=first_order,
    )


@pytest.mark.parametrize(
    "pooling, batch_norm, first_order",
    [
        ("max", "transductive", False),
        ("max", "per_task", False),
        ("strided", "per_task", False),
        ("max", "per_task", True),
        ("strided", "transductive", True),
    ],
)
def test_maml_meta_gradient_of_conv4_under_jit(x64, pooling, batch_norm, first_order):
    """Against central differences: second order, of the post-adaptation query loss in the
    meta-parameters; first order, of the query loss in the adapted parameters (FOMAML's
    meta-gradient is its gradient there, averaged over tasks)."""
    images = jax.random.uniform(jax.random.key(0), (4, SHOTS + QUERIES, 12, 12, 1))
    sampler = data.fewshot(
        np.asarray(images * 255, np.uint8), data.Episodes(ways=WAYS, shots=SHOTS, queries=QUERIES)
    )
    batch = data.sample_meta_batch(sampler, jax.random.key(1), TASKS)
    maml = conv_maml(pooling, batch_norm, first_order)
    state = maml.init(jax.random.key(2), batch)
    flat, unravel = ravel_pytree(state.meta_params)
    rng = jax.random.key(3)

    def meta_gradient(vector):
        new_state, _ = maml.meta_step(state._replace(meta_params=unravel(vector)), batch, rng)
        return ravel_pytree(new_state.meta_params)[0] - vector

    jitted = np.asarray(jax.jit(meta_gradient)(flat))
    assert np.all(np.isfinite(jitted))
    if first_order:
        params, model_states = jax.vmap(lambda s: maml.adapt(state, s, rng, 1))(batch.support)

        @jax.jit
        def query_loss(vector):  # Every task's adapted parameters moved by the same vector.
            shift = unravel(vector)["init"]

            def one(p, s, query):
                moved = jax.tree.map(jnp.add, p, shift)
                return maml.meta_model.outer_energy(state.meta_params, moved, s, rng, query)[0]

            return jnp.mean(jax.vmap(one)(params, model_states, batch.query))

        assert_directional_derivatives(query_loss, jnp.zeros_like(flat), jitted)
        return

    @jax.jit
    def meta_loss(vector):
        per_task = maml.evaluate(state._replace(meta_params=unravel(vector)), batch, rng, 1)
        return jnp.mean(per_task["loss"])

    assert_directional_derivatives(meta_loss, flat, jitted)
