"""The regression figure: curves of held-out tasks, and what the training loop writes."""

import glob

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from metax import data, learner, meta_models, nn
from metax.train import REGRESSION_FIGURE, figures


def check_regression_figure(workdir):
    """The training loop's regression figure: a PNG of 4 panels of 240 x 240 pixels in the
    workdir, and an image summary in the TensorBoard event file (called by
    tests/test_cost_controls.py's compile-count test, which already runs the loop)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Image.open(workdir / REGRESSION_FIGURE) as image:
        assert image.format == "PNG" and image.size == (960, 240)
    (events,) = glob.glob(str(workdir / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events, size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"] + accumulator.Tags()["images"]
    assert "regression_tasks" in tags, tags


def test_regression_curves_show_the_truth_and_the_adaptation():
    sampler = data.sinusoid()
    maml = learner.maml(
        meta_models.learned_init(nn.mlp([8], 1)), optax.sgd(0.01), num_inner_steps=1
    )
    key = jax.random.key(0)
    state = maml.init(key, data.sample_meta_batch(sampler, key, 2))
    curves = figures.regression_curves(maml, state, sampler, key, 10, num_tasks=3)
    tasks = data.sample_meta_batch(sampler, key, 3)
    assert curves.truth.shape == curves.before.shape == curves.after.shape == (3, 200)
    np.testing.assert_array_equal(curves.support_x, tasks.support.x[..., 0])
    # The ground truth passes through the task's own points; before adaptation every task
    # gets the same prediction, after adaptation it is closer to the truth.
    x, y = tasks.support.x[0, :, 0], tasks.support.y[0, :, 0]
    np.testing.assert_allclose(np.interp(x, curves.grid, curves.truth[0]), y, atol=0.05)
    np.testing.assert_allclose(curves.before[0], curves.before[1])
    error = lambda p: np.mean((p - curves.truth) ** 2)  # noqa: E731
    assert error(curves.after) < error(curves.before)
    assert figures.regression_figure(curves).shape == (240, 720, 3)
    assert not figures.has_regression_curves(
        maml, data.fewshot(jnp.zeros((6, 3, 4, 4, 1), jnp.uint8), 2, 1, 1)
    )
