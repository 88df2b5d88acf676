"""Prototypical networks: prototypes and logits against a direct computation, the meta-gradient
against finite differences (float64), one evaluation per episode in the training loop."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from metax import data, learner, nn
from metax.data import Dataset, MetaBatch
from metax.learner.prototypical import prototype_logits
from tests.helpers.gradcheck import central_differences, meta_gradient


def vector_episodes(num_tasks=2, ways=3, shots=2, queries=2, dim=4, dtype=jnp.float64):
    """Classes are Gaussian clusters around random means (per task); labels 0..ways-1."""
    keys = jax.random.split(jax.random.key(5), 3)
    means = 2.0 * jax.random.normal(keys[0], (num_tasks, ways, dim), dtype)

    def part(key, per_class):
        labels = jnp.tile(jnp.arange(ways), per_class)
        noise = jax.random.normal(key, (num_tasks, labels.size, dim), dtype)
        return Dataset(
            means[:, labels] + noise, jnp.broadcast_to(labels, (num_tasks, labels.size)), {}
        )

    return MetaBatch(part(keys[1], shots), part(keys[2], queries))


def test_logits_are_negative_squared_distances_to_class_means():
    rng = np.random.default_rng(0)
    support, query = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    labels = np.array([2, 0, 2, 0, 0, 2])  # Class 1 absent.
    logits = np.asarray(
        prototype_logits(jnp.asarray(support), jnp.asarray(labels), jnp.asarray(query))
    )
    assert logits.shape == (4, 6)
    for k in (0, 2):
        prototype = support[labels == k].mean(0)
        np.testing.assert_allclose(logits[:, k], -((query - prototype) ** 2).sum(1), rtol=1e-6)
    assert np.all(np.isneginf(logits[:, [1, 3, 4, 5]]))


def reference_loss(model, params, batch):
    """Mean query cross-entropy written out per task with explicit class loops."""
    batch = jax.tree.map(np.asarray, batch)  # Labels select rows: concrete under jit.
    total = 0.0
    num_tasks = batch.support.x.shape[0]
    for t in range(num_tasks):
        embed = lambda x: model.apply(params, {}, None, x)[0]  # noqa: E731
        support, query = embed(batch.support.x[t]), embed(batch.query.x[t])
        labels = np.asarray(batch.support.y[t])
        classes = sorted(set(labels.tolist()))
        prototypes = jnp.stack([support[labels == k].mean(0) for k in classes])
        logits = -jnp.sum((query[:, None] - prototypes[None]) ** 2, -1)
        targets = np.array([classes.index(k) for k in np.asarray(batch.query.y[t])])
        log_probs = jax.nn.log_softmax(logits)
        total += -jnp.mean(log_probs[np.arange(len(targets)), targets])
    return total / num_tasks


@pytest.mark.parametrize("task_chunk", [None, 1])
def test_meta_gradient_matches_finite_differences(x64, task_chunk):
    model = nn.mlp([5], 3, activation=jnp.tanh)
    batch = vector_episodes()
    protonet = learner.prototypical(model, optax.scale(1.0), task_chunk=task_chunk)
    state = protonet.init(jax.random.key(0), batch)
    flat, unravel = ravel_pytree(state.meta_params["embedding"])
    expected = central_differences(
        jax.jit(lambda v: reference_loss(model, unravel(v), batch)), flat
    )
    got = ravel_pytree(meta_gradient(protonet, state, batch)["embedding"])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    _, metrics = jax.jit(protonet.meta_step)(state, batch, jax.random.key(0))
    np.testing.assert_allclose(
        metrics["outer/loss"],
        reference_loss(model, state.meta_params["embedding"], batch),
        rtol=1e-12,
    )


def test_bad_input_is_refused():
    protonet = learner.prototypical(nn.mlp([5], 3))
    regression = data.sample_meta_batch(data.sinusoid(), jax.random.key(0), 2)
    with pytest.raises(ValueError, match="integer class labels"):
        protonet.init(jax.random.key(0), regression)
    single_task = jax.tree.map(lambda a: a[0], vector_episodes(dtype=jnp.float32))
    with pytest.raises(ValueError, match="no task axis"):
        protonet.init(jax.random.key(0), single_task)
    images = MetaBatch(
        *(
            d._replace(x=jnp.zeros((2, d.x.shape[1], 4, 4, 1)))
            for d in vector_episodes(dtype=jnp.float32)
        )
    )
    unflat = learner.prototypical(nn.mlp([5], 3))
    state = unflat.init(jax.random.key(0), images)
    with pytest.raises(ValueError, match="metax.nn.flatten"):
        unflat.meta_step(state, images, jax.random.key(0))


def test_training_loop_evaluates_once_per_episode(tmp_path):
    from metax.train import Checkpoints, Evaluation, TrainConfig, train

    images = np.random.default_rng(0).integers(0, 256, (12, 6, 8, 8, 1), dtype=np.uint8)
    sampler = data.fewshot(images, data.Episodes(ways=3, shots=2, queries=2))
    model = nn.sequential(flat=nn.flatten(), mlp=nn.mlp([16], 8))
    config = TrainConfig(
        learner=learner.prototypical(model, optax.adam(1e-3)),
        train_sampler=sampler,
        meta_batch_size=8,
        num_steps=10,
        log_every=5,
        evaluation=Evaluation(every=10, num_tasks=8, inner_steps=(1, 5)),  # Steps ignored.
        checkpoints=Checkpoints(every=10),
    )
    final = train(config, str(tmp_path))
    evaluated = sorted(k for k in final if k.startswith("eval/") and k != "eval/num_tasks")
    assert evaluated == [
        "eval/prototypes/accuracy",
        "eval/prototypes/accuracy_ci95",
        "eval/prototypes/loss",
        "eval/prototypes/loss_ci95",
    ]
    assert 0 <= final["eval/prototypes/accuracy"] <= 1
    assert json.loads((tmp_path / "final_metrics.json").read_text()) == final
