"""A shared smoke test for learners, metax's own and yours (as learned_optimization's
``trainer_smoketest``): every registered learner runs it on every meta-model it accepts.

    from metax import testing
    testing.learner_smoke_test(lambda: my_learner(meta_model), testing.example_batch())

checks that the learner initializes, takes one meta-step sharded over all devices that equals
the one-device step to rounding (in float64) and moves the meta-parameters, evaluates with
finite per-task metrics in each of its evaluation settings, and adapts one task to parameters
shaped like the meta-model's reset.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metax import data, nn
from metax.data.base import MetaBatch
from metax.learner.base import Learner, evaluation_settings
from metax.learner.compatibility import build_example
from metax.learner.registry import LEARNERS
from metax.mesh import replicated, task_mesh, task_sharded
from metax.meta_models.registry import META_MODELS

RTOL, ATOL = 1e-12, 1e-14  # Sharded against one device, in float64.
NUM_TASKS = 8


def example_batch(tasks: str = "regression", num_tasks: int = NUM_TASKS) -> MetaBatch:
    """A small meta-batch (float64 when x64 is on): 1-D sinusoid regression tasks, or 3-way
    2-shot episodes of 8x8 grey images (``tasks="classification"``)."""
    key = jax.random.key(0)
    if tasks == "regression":
        sampler = data.sinusoid(amplitude_range=(0.1, 1.0))
    else:
        images = np.random.default_rng(0).integers(0, 256, (12, 6, 8, 8, 1), dtype=np.uint8)
        sampler = data.fewshot(images, data.Episodes(ways=3, shots=2, queries=2))
    batch = data.sample_meta_batch(sampler, key, num_tasks)
    dtype = jnp.result_type(float)  # float64 under x64, else float32.
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, batch
    )


def _one_step(learner: Learner, state, batch: MetaBatch, devices) -> tuple:
    mesh = task_mesh(devices)
    step = jax.jit(
        learner.meta_step,
        in_shardings=(replicated(mesh), task_sharded(mesh), replicated(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
    )
    return jax.device_get(step(state, batch, jax.random.key(2)))


def _assert_close(name: str, actual, expected) -> None:
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    ):
        where = f"{name}{jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL, err_msg=f"{where}: sharded != one"
        )


def learner_smoke_test(make_learner: Callable[[], Learner], batch: MetaBatch) -> None:
    """Runs the smoke test (module docstring) on ``make_learner()`` and ``batch`` (a meta-batch
    whose task count divides over the devices; `example_batch`). Run it in float64
    (``jax.enable_x64(True)``) for the sharded step to equal the one-device step to 1e-12.

    Raises:
      AssertionError: naming what failed.
    """
    learner = make_learner()
    state = learner.init(jax.random.key(1), batch)
    one_state, one_metrics = _one_step(learner, state, batch, jax.devices()[:1])
    all_state, all_metrics = _one_step(learner, state, batch, jax.devices())
    _assert_close("state", all_state, one_state)
    _assert_close("metrics", all_metrics, one_metrics)
    for name, value in one_metrics.items():
        assert np.all(np.isfinite(value)), f"meta-step metric {name} is not finite: {value}"
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(
            jax.tree.leaves(state.meta_params), jax.tree.leaves(one_state.meta_params), strict=True
        )
    ]
    assert max(moved) > 0, "the meta-step did not change the meta-parameters"
    num_tasks = batch.support.x.shape[0]
    for label, setting in evaluation_settings(learner, (1, 2)).items():
        evaluate = jax.jit(learner.evaluate, static_argnums=3)
        per_task = jax.device_get(evaluate(one_state, batch, jax.random.key(3), setting))
        for name, values in per_task.items():
            assert np.shape(values) == (num_tasks,), f"evaluate {label}/{name}: {np.shape(values)}"
            assert np.all(np.isfinite(values)), f"evaluate {label}/{name} is not finite"
    if learner.adapt is not None and learner.meta_model is not None:
        support = jax.tree.map(lambda x: x[0], batch.support)
        params, _ = learner.adapt(one_state, support, jax.random.key(4), 2)
        key = jax.random.key(5)
        reset, _ = learner.meta_model.reset(key, one_state.meta_params, one_state.model_state)
        structure: Any = jax.tree.structure(params)
        assert structure == jax.tree.structure(reset), "adapt changed the parameters' tree"
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reset), strict=True):
            assert np.shape(a) == np.shape(b) and np.all(np.isfinite(a)), "adapt: bad parameters"


def example_embedding_model() -> nn.Model:
    """The embedding model of the smoke test of learners that take a model (not a
    meta-model): flattened images through a small MLP."""
    return nn.sequential(flat=nn.flatten(), mlp=nn.mlp([8], 4, activation=jnp.tanh))


def registered_learner_smoke_test(learner_name: str, meta_model_name: str | None = None) -> None:
    """`learner_smoke_test` of a registered learner's example (`metax.learner.registry`) on a
    registered meta-model's example (or, for learners that take a model, on
    `example_embedding_model`), in float64."""
    entry = LEARNERS[learner_name]
    with jax.enable_x64(True):
        if entry.takes == "model":
            make = lambda: entry.example(example_embedding_model())  # noqa: E731
        else:
            if meta_model_name is None:
                raise ValueError(f"{learner_name} takes a meta-model: name one.")
            meta_model = META_MODELS[meta_model_name].example
            make = lambda: build_example(entry, meta_model())  # noqa: E731
        learner_smoke_test(make, example_batch(entry.tasks))
