"""ResNet-12: shapes, the same function with either convolution, and gradients in float64 under
jit against finite differences (both BatchNorm modes). That jit and op-by-op execution give the
same gradient is tested for conv4 (`test_conv_gradients.py`), whose layers ResNet-12 shares
but for the shortcut's addition: the op-by-op gradient of ResNet-12 took a minute of the
suite's ten (every primitive compiled on its own)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metax import nn
from tests.helpers.gradcheck import assert_directional_derivatives

SMALL = (4, 6, 8, 8)


def test_shapes_parameters_and_state():
    model = nn.resnet12(SMALL)
    x = jnp.zeros((3, 84, 84, 3))
    params, state = model.init(jax.random.key(0), x)
    out, new_state = jax.eval_shape(lambda p, s: model.apply(p, s, None, x), params, state)
    assert out.shape == (3, 8)
    assert set(params["block_0"]) == {
        "conv_0",
        "conv_1",
        "conv_2",
        "shortcut",
        "bn_0",
        "bn_1",
        "bn_2",
        "bn_shortcut",
    }
    assert params["block_1"]["conv_0"]["w"].shape == (3, 3, 4, 6)
    assert params["block_1"]["shortcut"]["w"].shape == (1, 1, 4, 6)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    with pytest.raises(ValueError, match="4 positive widths"):
        nn.resnet12((64, 160, 320))


def test_matmul_and_lax_convolutions_compute_the_same_function(x64):
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    params, state = nn.resnet12(SMALL).init(jax.random.key(1), x)
    outs = [
        jax.jit(nn.resnet12(SMALL, conv_impl=impl).apply)(params, state, None, x)[0]
        for impl in ("matmul", "lax")
    ]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("is_training", [True, False], ids=["batch_stats", "running_stats"])
def test_gradient_under_jit_matches_finite_differences(x64, is_training):
    # (MAML through it differentiates these same functions twice: the second-order path is
    # covered for conv4 in test_conv_gradients.py, which shares every layer but the shortcut.)
    model = nn.sequential(body=nn.resnet12(SMALL), head=nn.linear(5))
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    labels = jnp.array([1, 3, 0])
    params, state = model.init(jax.random.key(1), x)
    state = jax.tree.map(lambda s: s + 0.3, state)  # Running statistics unlike the batch's.
    flat, unravel = ravel_pytree(params)

    def loss(vector):
        logits, _ = model.apply(
            unravel(vector), state, jax.random.key(2), x, is_training=is_training
        )
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    jitted = np.asarray(jax.jit(jax.grad(loss))(flat))
    assert np.all(np.isfinite(jitted))
    assert_directional_derivatives(jax.jit(loss), flat, jitted)
