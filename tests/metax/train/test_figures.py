"""The regression figure: curves of held-out tasks, and what the training loop writes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax import data, learner, meta_models, nn
from metax.train import figures


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
    # Each panel's query MSE is that of the same predictions on the query points.
    assert curves.query_mse_before.shape == curves.query_mse_after.shape == (3,)
    assert np.all(curves.query_mse_after < curves.query_mse_before)
    assert figures.regression_figure(curves).shape == (300, 720, 3)
    assert not figures.has_regression_curves(
        maml,
        data.fewshot(
            jnp.zeros((6, 3, 4, 4, 1), jnp.uint8), data.Episodes(ways=2, shots=1, queries=1)
        ),
    )


def test_episode_grid_frames_right_queries_green_and_wrong_ones_red():
    """2 classes, 1 shot, 2 queries each; the second query of class 0 is predicted 1."""
    images = np.full((2, 6, 5, 5, 1), 0.5, np.float32)
    episode = data.MetaBatch(
        support=data.Dataset(images[:, 0], np.array([0, 1]), {}),
        query=data.Dataset(images[:, 1:3].reshape(4, 5, 5, 1), np.array([0, 0, 1, 1]), {}),
    )
    plain = figures.episode_grid(episode)
    grid = figures.episode_grid(episode, np.array([0, 1, 1, 1]))
    assert grid.shape[1] == plain.shape[1] and grid.shape[0] > plain.shape[0]  # + a line.

    def frame_color(row, column):
        """The pixel just left of a query tile's top-left corner: its frame."""
        cell = 5 * figures._SCALE + figures._PAD
        left = figures._LABEL_WIDTH + 1 * cell + 3 * figures._PAD + column * cell
        top = 2 * figures._HEADER_HEIGHT + row * cell
        return tuple(grid[top + 2, left - 1])

    assert frame_color(0, 0) == (0, 170, 0)
    assert frame_color(0, 1) == (220, 0, 0)
    assert frame_color(1, 0) == frame_color(1, 1) == (0, 170, 0)


def test_adapted_query_predictions_are_the_argmax_the_accuracy_scores(x64):
    """The figure's predictions after adaptation give exactly the evaluated accuracy."""
    from metax import energy

    images = jax.random.uniform(jax.random.key(1), (3, 4, 4, 4, 1))
    sampler = data.fewshot(images, data.Episodes(ways=3, shots=1, queries=3))
    model = nn.sequential(body=nn.flatten(), head=nn.mlp([8], 3))
    maml = learner.maml(
        meta_models.learned_init(model, loss_fn=energy.cross_entropy),
        optax.sgd(0.5),
        num_inner_steps=1,
    )
    key = jax.random.key(0)
    batch = data.sample_meta_batch(sampler, key, 1)
    state = maml.init(key, batch)
    episode = jax.tree.map(lambda x: x[0], batch)
    predictions = figures.adapted_query_predictions(maml, state, episode, key, 2)
    assert predictions.shape == (9,) and predictions.dtype == jnp.int32
    accuracy = maml.evaluate(state, batch, key, 2)["accuracy"][0]
    np.testing.assert_allclose(np.mean(predictions == episode.query.y), accuracy)
