"""A few meta-steps of a learner through the training loop's compiled step, on any mesh:
shared by the multi-process worker and the single-process reference."""

import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from metax import data, energy, learner, meta_models, nn
from metax.train import fetch, make_train_step, sharding

NUM_STEPS = 4


def make(name):
    mlp = nn.mlp([8], 1, activation=jnp.tanh)
    if name == "maml":
        return learner.maml(
            meta_models.learned_init(mlp), optax.sgd(0.05), optax.sgd(0.1), num_inner_steps=2
        )
    if name == "implicit":
        return learner.implicit(
            meta_models.learned_init(mlp, reg_strength=1.0),
            learner.conjugate_gradient(3),
            optax.sgd(0.05),
            optax.sgd(0.1),
            num_inner_steps=5,
        )
    if name == "fewshot_maml":
        body = nn.conv4(num_channels=4, num_blocks=2, pooling="strided")
        model = nn.sequential(body=body, head=nn.linear(3))
        return learner.maml(
            meta_models.learned_init(model, loss_fn=energy.cross_entropy),
            optax.sgd(0.4),
            optax.sgd(0.1),
            num_inner_steps=1,
        )
    if name == "evolution":
        return learner.evolution(
            meta_models.learned_init(mlp), population_size=4, num_inner_steps=1
        )
    raise ValueError(name)


def sampler(name):
    if name == "fewshot_maml":
        # Episodes drawn on device from one image array that every process holds.
        images = np.random.default_rng(0).integers(0, 256, (12, 6, 16, 16, 1), dtype=np.uint8)
        return data.fewshot(images, data.Episodes(ways=3, shots=2, queries=2), rotations=True)
    return data.sinusoid(amplitude_range=(0.1, 1.0))


def run(name, devices):
    """Final meta-parameters (flat) and the last step's metrics after NUM_STEPS steps."""
    mesh = sharding.task_mesh(devices)
    init, train_step = make_train_step(make(name), sampler(name), 16, mesh, seed=3)
    state = init()
    for _ in range(NUM_STEPS):
        state, metrics = train_step(state)
    params, _ = ravel_pytree(fetch(state.meta_params))
    return np.asarray(params), {k: np.asarray(v) for k, v in fetch(metrics).items()}
