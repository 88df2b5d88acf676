"""The sharded meta-step on 8 CPU devices equals the single-device one.

Compared in float64 with rtol 1e-12: 1 and 8 devices sum the task gradients in different
orders, and in float32 that rounding can move a ReLU across its kink (a jump in the
second-order meta-gradient, see test_multihost.py); in float64 they agree to ~1e-16.
"""

import jax
import numpy as np
import optax
import pytest

from metax import data, learner, meta_models, nn
from metax.train import sharding


def _setup(outer_optimizer):
    meta_model = meta_models.learned_init(nn.mlp([16, 16], 1))
    maml = learner.maml(meta_model, optax.sgd(0.01), outer_optimizer, num_inner_steps=3)
    batch = data.sample_meta_batch(data.sinusoid(), jax.random.key(0), 16)
    return maml, batch


def _run_steps(maml, batch, mesh, num_steps=3):
    state = jax.device_put(maml.init(jax.random.key(1), batch), sharding.replicated(mesh))
    step = sharding.jit_meta_step(maml, mesh)
    batch = sharding.shard_meta_batch(batch, mesh)
    for i in range(num_steps):
        state, metrics = step(state, batch, jax.random.key(10 + i))
    return jax.device_get(state), jax.device_get(metrics)


def test_eight_devices_match_one_device(x64):
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 CPU devices"
    # Plain SGD: its update is proportional to the gradient, so a gradient summed instead of
    # averaged over devices (8x too large) changes the result; Adam would hide it.
    maml, batch = _setup(optax.sgd(0.01))
    one_state, one_metrics = _run_steps(maml, batch, sharding.task_mesh(jax.devices()[:1]))
    eight_state, eight_metrics = _run_steps(maml, batch, sharding.task_mesh())
    for a, b in zip(jax.tree.leaves(one_state), jax.tree.leaves(eight_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for key in one_metrics:
        np.testing.assert_allclose(one_metrics[key], eight_metrics[key], rtol=1e-12)
    # The sharded step moved the parameters (the comparison is not between two no-ops).
    init = maml.init(jax.random.key(1), batch)
    moved = jax.tree.map(
        lambda a, b: np.abs(a - b).max(), init.meta_params, eight_state.meta_params
    )
    assert max(jax.tree.leaves(moved)) > 1e-3


def test_sharded_meta_gradient_is_the_mean_over_tasks(x64):
    """Against an unsharded (one-device) reference: catches a gradient summed over devices."""
    maml, batch = _setup(optax.sgd(1.0))
    mesh = sharding.task_mesh()
    state = maml.init(jax.random.key(1), batch)
    _, reference = jax.jit(maml.meta_step)(state, batch, jax.random.key(10))  # One device.
    _, metrics = sharding.jit_meta_step(maml, mesh)(
        jax.device_put(state, sharding.replicated(mesh)),
        sharding.shard_meta_batch(batch, mesh),
        jax.random.key(10),
    )
    np.testing.assert_allclose(metrics["meta_grad_norm"], reference["meta_grad_norm"], rtol=1e-12)


def test_indivisible_meta_batch_names_both_numbers():
    maml, _ = _setup(optax.sgd(0.1))
    batch = data.sample_meta_batch(data.sinusoid(), jax.random.key(0), 12)
    mesh = sharding.task_mesh()
    with pytest.raises(ValueError, match=r"12 tasks does not divide over the 8 devices.*8 or 16"):
        sharding.shard_meta_batch(batch, mesh)
    state = maml.init(jax.random.key(1), batch)
    with pytest.raises(ValueError, match="12 tasks does not divide over the 8 devices"):
        sharding.jit_meta_step(maml, mesh)(state, batch, jax.random.key(2))
