"""Each learner learns: the post-adaptation query MSE of held-out sinusoid tasks falls (every
learner x meta-model pair runs the shared smoke test: test_registered_learners.py)."""

import jax
import jax.numpy as jnp
import optax
import pytest

from metax import learner, meta_models, nn
from tests.helpers.gradcheck import sinusoid_mse_before_and_after


def relu_mlp():
    return nn.mlp([40, 40], 1, activation=jax.nn.relu)


def tanh_mlp():
    # Implicit differentiation and equilibrium propagation assume a converged inner loop: a
    # small smooth network on small amplitudes converges in 100 steps of SGD 0.05.
    return nn.mlp([20], 1, activation=jnp.tanh)


# name -> (learner, meta-steps, inner steps at evaluation, amplitudes, threshold). Measured
# after/before ratios: reptile 0.23, buffered_reptile 0.36, implicit 0.60, eqprop 0.43,
# evolution 0.36.
LEARNING = {
    "reptile": (
        lambda: learner.reptile(
            meta_models.learned_init(relu_mlp()),
            optax.sgd(0.02),
            optax.adam(1e-3),
            num_inner_steps=5,
        ),
        1500,
        5,
        (0.1, 5.0),
        0.4,
    ),
    "buffered_reptile": (
        lambda: learner.buffered_reptile(
            meta_models.complex_synapse(relu_mlp(), log_strength_init=-2.0),
            optax.sgd(0.02),
            optax.adam(1e-3),
            num_inner_steps=5,
        ),
        1500,
        5,
        (0.1, 5.0),
        0.5,
    ),
    "implicit": (
        lambda: learner.implicit(
            meta_models.learned_init(tanh_mlp(), reg_strength=1.0),
            learner.conjugate_gradient(10),
            optax.sgd(0.05),
            optax.adam(1e-3),
            num_inner_steps=100,
        ),
        500,
        100,
        (0.1, 0.5),
        0.75,
    ),
    "eqprop": (
        lambda: learner.eqprop(
            meta_models.complex_synapse(tanh_mlp()),
            optax.sgd(0.05),
            optax.adam(1e-3),
            num_inner_steps=100,
            num_nudged_steps=50,
            beta=0.05,
            symmetric=True,
        ),
        500,
        100,
        (0.1, 0.5),
        0.6,
    ),
    "evolution": (
        lambda: learner.evolution(
            meta_models.cavia(relu_mlp(), 5),
            "Open_ES",
            population_size=16,
            inner_optimizer=optax.sgd(1.0),
            num_inner_steps=1,
            strategy_kwargs={
                "optimizer": optax.adam(0.01),
                "std_schedule": optax.constant_schedule(0.05),
            },
        ),
        500,
        5,
        (0.1, 5.0),
        0.5,
    ),
}


@pytest.mark.parametrize("name", list(LEARNING))
def test_learner_learns_sinusoid(name):
    make, steps, eval_steps, amplitudes, threshold = LEARNING[name]
    before, after = sinusoid_mse_before_and_after(make(), steps, eval_steps, amplitudes)
    assert after < threshold * before, (before, after)
