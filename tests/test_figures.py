"""The regression figure: written by the training loop as PNG and to TensorBoard."""

import glob

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from metax import data, figures, learner, module, nn
from metax.train import REGRESSION_FIGURE, train


def test_train_writes_the_regression_figure_as_png_and_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    maml = learner.maml(module.learned_init(nn.mlp([8], 1)), optax.sgd(0.01), num_inner_steps=1)
    train(
        learner=maml,
        train_sampler=data.sinusoid(),
        workdir=str(tmp_path),
        meta_batch_size=8,
        num_steps=2,
        log_every=1,
        eval_num_tasks=8,
        eval_inner_steps=(1, 3),
    )
    with Image.open(tmp_path / REGRESSION_FIGURE) as image:
        assert image.format == "PNG" and image.size == (960, 240)
    (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events, size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"] + accumulator.Tags()["images"]
    assert "regression_tasks" in tags, tags


def test_regression_curves_show_the_truth_and_the_adaptation():
    sampler = data.sinusoid()
    maml = learner.maml(module.learned_init(nn.mlp([8], 1)), optax.sgd(0.01), num_inner_steps=1)
    key = jax.random.key(0)
    state = maml.init(key, data.sample_meta_batch(sampler, key, 2))
    curves = figures.regression_curves(maml, state, sampler, key, 10, num_tasks=3)
    tasks = data.sample_meta_batch(sampler, key, 3)
    assert curves.truth.shape == curves.before.shape == curves.after.shape == (3, 200)
    np.testing.assert_array_equal(curves.support_x, tasks.train.x[..., 0])
    # The ground truth passes through the task's own points; before adaptation every task
    # gets the same prediction, after adaptation it is closer to the truth.
    x, y = tasks.train.x[0, :, 0], tasks.train.y[0, :, 0]
    np.testing.assert_allclose(np.interp(x, curves.grid, curves.truth[0]), y, atol=0.05)
    np.testing.assert_allclose(curves.before[0], curves.before[1])
    error = lambda p: np.mean((p - curves.truth) ** 2)  # noqa: E731
    assert error(curves.after) < error(curves.before)
    assert figures.regression_figure(curves).shape == (240, 720, 3)
    assert not figures.has_regression_curves(
        maml, data.fewshot(jnp.zeros((6, 3, 4, 4, 1), jnp.uint8), 2, 1, 1)
    )
