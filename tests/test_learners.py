"""Every learner x meta-model: refused or run, sharded on 8 devices as on 1; each learner learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from gradcheck import sinusoid_mse_before_and_after

from metax import data, learner, meta_models, nn
from metax.train import sharding


def tiny_mlp(out=1, activate_final=False):
    return nn.mlp([4], out, activation=jnp.tanh, activate_final=activate_final)


META_MODELS = {
    "learned_init": lambda: meta_models.learned_init(tiny_mlp()),
    "learned_init_reg": lambda: meta_models.learned_init(tiny_mlp(), reg_strength=1.0),
    "anil": lambda: meta_models.anil(tiny_mlp(4, True), nn.linear(1)),
    "cavia": lambda: meta_models.cavia(tiny_mlp(), embedding_dim=2),
    "complex_synapse": lambda: meta_models.complex_synapse(tiny_mlp()),
    "gain_mod": lambda: meta_models.gain_mod(tiny_mlp(4, True), nn.linear(1)),
    "gain_mod_reg": lambda: meta_models.gain_mod(tiny_mlp(4, True), nn.linear(1), reg_strength=0.1),
}
INNER = {"inner_optimizer": optax.sgd(0.05), "num_inner_steps": 2}
LEARNERS = {
    "maml": lambda mm: learner.maml(mm, outer_optimizer=optax.sgd(0.1), **INNER),
    "fomaml": lambda mm: learner.maml(
        mm, outer_optimizer=optax.sgd(0.1), first_order=True, **INNER
    ),
    "reptile": lambda mm: learner.reptile(mm, outer_optimizer=optax.sgd(0.1), **INNER),
    "buffered_reptile": lambda mm: learner.buffered_reptile(
        mm, outer_optimizer=optax.sgd(0.1), **INNER
    ),
    "implicit_cg": lambda mm: learner.implicit(
        mm, learner.conjugate_gradient(2), outer_optimizer=optax.sgd(0.1), **INNER
    ),
    "eqprop": lambda mm: learner.eqprop(
        mm, outer_optimizer=optax.sgd(0.1), num_nudged_steps=1, **INNER
    ),
    "evolution": lambda mm: learner.evolution(mm, population_size=4, **INNER),
}
# Meta-models each learner cannot train (it refuses them when built); all others must run.
REFUSED = {
    "reptile": {"anil", "cavia", "complex_synapse", "gain_mod", "gain_mod_reg"},
    "buffered_reptile": {"learned_init", "anil", "gain_mod"},
    "implicit_cg": {"learned_init", "anil", "gain_mod"},
    "eqprop": {"learned_init", "anil", "gain_mod"},
}
COMBOS = [(lrn, mm) for lrn in LEARNERS for mm in META_MODELS]


def one_step(make, mesh, batch):
    state = jax.device_put(make().init(jax.random.key(1), batch), sharding.replicated(mesh))
    step = sharding.jit_meta_step(make(), mesh)
    state, metrics = step(state, sharding.shard_meta_batch(batch, mesh), jax.random.key(2))
    return jax.device_get((state, metrics))


@pytest.mark.parametrize("learner_name, meta_model_name", COMBOS)
def test_learner_and_meta_model_run_sharded_like_on_one_device(x64, learner_name, meta_model_name):
    """In float64 (see tests/test_sharding.py for why): equal to rounding."""

    def make():
        return LEARNERS[learner_name](META_MODELS[meta_model_name]())

    if meta_model_name in REFUSED.get(learner_name, ()):
        with pytest.raises(ValueError, match="cannot meta-learn the meta-parameters"):
            make()
        return
    batch = data.sample_meta_batch(data.sinusoid(amplitude_range=(0.1, 1.0)), jax.random.key(0), 8)
    one_state, one_metrics = one_step(make, sharding.task_mesh(jax.devices()[:1]), batch)
    eight_state, eight_metrics = one_step(make, sharding.task_mesh(), batch)
    for a, b in zip(jax.tree.leaves(one_state), jax.tree.leaves(eight_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for key, value in one_metrics.items():
        assert np.isfinite(value), key
        np.testing.assert_allclose(value, eight_metrics[key], rtol=1e-12, atol=1e-14)
    init = make().init(jax.random.key(1), batch)
    moved = [
        np.abs(a - b).max()
        for a, b in zip(
            jax.tree.leaves(init.meta_params), jax.tree.leaves(one_state.meta_params), strict=True
        )
    ]
    assert max(moved) > 0, "the meta-step did not change the meta-parameters"


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
