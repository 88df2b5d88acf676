"""Shapes and semantics of the stateless models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax import nn


def test_mlp_shapes_and_named_params():
    model = nn.mlp([40, 40], 1)
    params, state = model.init(jax.random.key(0), jnp.zeros((10, 1)))
    assert set(params) == {"layer_0", "layer_1", "output"}
    assert params["layer_0"]["w"].shape == (1, 40) and params["output"]["w"].shape == (40, 1)
    assert state == {}
    out, _ = model.apply(params, state, None, jnp.ones((7, 1)), is_training=True)
    assert out.shape == (7, 1)


def test_linear_init_follows_haiku_default():
    params, _ = nn.linear(200).init(jax.random.key(0), jnp.zeros((1, 400)))
    w = np.asarray(params["w"])
    # Truncated at 2 stddevs of 1/sqrt(fan_in): bounded, with std 0.88/sqrt(fan_in).
    assert np.abs(w).max() <= 2 / np.sqrt(400) + 1e-6
    np.testing.assert_allclose(w.std(), 0.8796 / np.sqrt(400), rtol=0.02)
    np.testing.assert_array_equal(params["b"], 0.0)


def test_mlp_gain_and_shift_modulate_hidden_preactivations():
    model = nn.mlp([3], 2, activation=lambda z: z)  # linear activation: closed form
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    x = jax.random.normal(jax.random.key(1), (5, 4))
    gain, shift = {"layer_0": jnp.array([2.0, 0.5, -1.0])}, {"layer_0": jnp.array([1.0, 0.0, 3.0])}
    out, _ = model.apply(params, state, None, x, gain=gain, shift=shift)
    hidden = (x @ params["layer_0"]["w"] + params["layer_0"]["b"]) * gain["layer_0"] + shift[
        "layer_0"
    ]
    expected = hidden @ params["output"]["w"] + params["output"]["b"]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert model.modulation(params) == {"layer_0": (3,)}


# 28 -> 14 -> 7 -> 3 -> 1 with VALID 2x2 max-pools; 28 -> 14 -> 7 -> 4 -> 2 with SAME strides.
@pytest.mark.parametrize("pooling, side", [("max", 1), ("strided", 2)])
def test_conv4_shapes_and_batch_norm_state(pooling, side):
    model = nn.conv4(num_channels=8, pooling=pooling)
    x = jax.random.normal(jax.random.key(0), (6, 28, 28, 1))
    params, state = model.init(jax.random.key(1), x)
    features, new_state = model.apply(params, state, None, x, is_training=True)
    assert features.shape == (6, side * side * 8)
    # Training mode updates the running statistics; evaluation mode reads them and keeps them.
    assert not np.allclose(new_state["block_0"]["mean"], state["block_0"]["mean"])
    _, eval_state = model.apply(params, new_state, None, x, is_training=False)
    jax.tree.map(np.testing.assert_array_equal, eval_state, new_state)
    assert model.modulation(params) == {f"block_{i}": (8,) for i in range(4)}


def test_conv4_normalizes_with_batch_statistics_in_training():
    model = nn.conv4(num_channels=4, num_blocks=1)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    params, state = model.init(jax.random.key(1), x)
    gain = {"block_0": jnp.ones(4)}
    shift = {"block_0": jnp.full(4, 100.0)}  # Lifts every unit above zero: ReLU is identity.
    features, _ = model.apply(params, state, None, x, is_training=True, gain=gain, shift=shift)
    # Max-pooling shifts the mean up, but without the batch statistics it would be far from 100.
    assert 99.5 < float(jnp.mean(features)) < 101.5


def test_sequential_composes_named_layers():
    model = nn.sequential(body=nn.conv4(num_channels=4), head=nn.linear(5))
    x = jnp.zeros((3, 28, 28, 1))
    params, state = model.init(jax.random.key(0), x)
    assert set(params) == {"body", "head"} and params["head"]["w"].shape == (4, 5)
    logits, new_state = model.apply(params, state, jax.random.key(1), x, is_training=True)
    assert logits.shape == (3, 5) and set(new_state) == {"body", "head"}


def test_conv4_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="pooling must be 'max' or 'strided'"):
        nn.conv4(pooling="avg")


@pytest.mark.parametrize("side, stride, c_in", [(8, 1, 2), (7, 2, 3)])
def test_matmul_conv_equals_lax_conv_to_second_order(x64, side, stride, c_in):
    """The im2col convolution is the same function as lax's: values, gradients in the input
    and the kernel, and second derivatives (what second-order MAML differentiates)."""
    kx, kw, kv = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, side, side, c_in))
    w = jax.random.normal(kw, (3, 3, c_in, 4))

    def loss(impl):
        # A nonlinear scalar, so that its Hessian exercises the convolution's second derivative.
        return lambda x, w: jnp.sum(jnp.tanh(nn.conv2d(x, w, stride, impl)) ** 2)

    v = jax.random.normal(kv, w.shape)

    @jax.jit
    def derivatives(x, w):
        return {
            impl: (
                nn.conv2d(x, w, stride, impl),
                jax.grad(loss(impl), (0, 1))(x, w),
                jax.jvp(jax.grad(loss(impl), 1), (x, w), (jnp.zeros_like(x), v))[1],
            )
            for impl in ("matmul", "lax")
        }

    results = derivatives(x, w)
    for actual, expected in zip(
        jax.tree.leaves(results["matmul"]), jax.tree.leaves(results["lax"]), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("side", [28, 7])
def test_max_pool_equals_reduce_window(x64, side):
    """Same values and gradient as lax.reduce_window (inputs without ties), odd sides cropped."""
    x = jax.random.normal(jax.random.key(0), (2, side, side, 3))

    def reduce_window(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    np.testing.assert_array_equal(nn.max_pool_2x2(x), reduce_window(x))
    weights = jax.random.normal(jax.random.key(1), reduce_window(x).shape)
    grads = [
        jax.grad(lambda x, f=f: jnp.sum(f(x) * weights))(x)
        for f in (nn.max_pool_2x2, reduce_window)
    ]
    np.testing.assert_array_equal(grads[0], grads[1])


def test_conv4_matmul_and_lax_give_the_same_model(x64):
    x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1))
    models = [nn.conv4(num_channels=8, conv_impl=impl) for impl in ("matmul", "lax")]
    params, state = models[0].init(jax.random.key(1), x)
    outputs = jax.jit(
        lambda p, x: [m.apply(p, state, None, x, is_training=True)[0] for m in models]
    )(params, x)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        nn.conv4(conv_impl="fft")
