"""Pictures for TensorBoard and the workdir: image grids of few-shot episodes, and for
regression tasks the ground truth, support points and predictions before and after
adaptation."""

import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metax.data.base import MetaBatch, TaskSampler, sample_meta_batch

_PAD = 2
_SCALE = 2
_LABEL_WIDTH = 28
_HEADER_HEIGHT = 14


def is_image_episode(episode: MetaBatch) -> bool:
    """Whether a single task's support inputs are images ``(n, h, w, c)`` with 1 or 3 channels
    and integer class labels ``(n,)``."""
    x, y = episode.support.x, episode.support.y
    return (
        np.ndim(x) == 4
        and x.shape[-1] in (1, 3)
        and np.ndim(y) == 1
        and np.issubdtype(np.asarray(y).dtype, np.integer)
    )


def episode_grid(episode: MetaBatch) -> np.ndarray:
    """One task's episode as an ``(H, W, 3)`` uint8 image: a row per label (written at its
    left), its support images, a gap, then its query images (images in [0, 1])."""
    from PIL import Image, ImageDraw

    support_x, support_y = np.asarray(episode.support.x), np.asarray(episode.support.y)
    query_x, query_y = np.asarray(episode.query.x), np.asarray(episode.query.y)
    labels = np.unique(np.concatenate([support_y, query_y]))
    h, w = support_x.shape[1:3]
    cell_h, cell_w = h * _SCALE + _PAD, w * _SCALE + _PAD
    shots = max(int(np.sum(support_y == label)) for label in labels)
    queries = max(int(np.sum(query_y == label)) for label in labels)
    query_left = _LABEL_WIDTH + shots * cell_w + 3 * _PAD
    canvas = Image.new(
        "RGB",
        (query_left + queries * cell_w, _HEADER_HEIGHT + len(labels) * cell_h),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((_LABEL_WIDTH, 1), "support", fill=(0, 0, 160))
    draw.text((query_left, 1), "query", fill=(160, 0, 0))

    def tile(image):
        pixels = np.clip(np.asarray(image, np.float32) * 255, 0, 255).astype(np.uint8)
        pixels = np.broadcast_to(pixels, (h, w, 3)) if pixels.shape[-1] == 1 else pixels
        return Image.fromarray(np.ascontiguousarray(pixels)).resize((w * _SCALE, h * _SCALE))

    for row, label in enumerate(labels):
        top = _HEADER_HEIGHT + row * cell_h
        draw.text((2, top + cell_h // 2 - 6), str(int(label)), fill=(0, 0, 0))
        for left, images in (
            (_LABEL_WIDTH, support_x[support_y == label]),
            (query_left, query_x[query_y == label]),
        ):
            for column, image in enumerate(images):
                canvas.paste(tile(image), (left + column * cell_w, top))
    return np.asarray(canvas)


class RegressionCurves(NamedTuple):
    """Arrays for `regression_figure`: ``grid (points,)``, ``truth``, ``before`` and
    ``after`` ``(tasks, points)``, support ``support_x`` and ``support_y`` ``(tasks, shots)``."""

    grid: np.ndarray
    truth: np.ndarray
    before: np.ndarray
    after: np.ndarray
    support_x: np.ndarray
    support_y: np.ndarray


def has_regression_curves(learner, sampler: TaskSampler) -> bool:
    """Whether `regression_curves` can draw these tasks: a sampler with a ground truth
    (``target_fn``) and a learner that exposes ``adapt`` and its meta-model."""
    return (
        sampler.target_fn is not None
        and learner.adapt is not None
        and learner.meta_model is not None
    )


def regression_curves(
    learner,
    state,
    sampler: TaskSampler,
    rng: jax.Array,
    num_inner_steps: int,
    num_tasks: int = 4,
    num_points: int = 200,
) -> RegressionCurves:
    """Predictions of ``num_tasks`` tasks of ``sampler`` (task i drawn from ``fold_in(rng,
    i)``, as `sample_meta_batch` draws them) on a grid over their inputs' range, before
    adaptation (the meta-model's reset) and after ``num_inner_steps`` inner steps on the
    support set (``learner.adapt``). Scalar inputs and outputs only. One jit compilation;
    returns device arrays (``metax.train.fetch`` copies them on several processes)."""
    meta_model = learner.meta_model

    @jax.jit
    def curves(state, rng):
        batch = sample_meta_batch(sampler, rng, num_tasks)
        inputs = jnp.concatenate([batch.support.x, batch.query.x], axis=1)
        grid = jnp.linspace(jnp.min(inputs), jnp.max(inputs), num_points)[:, None]

        def one(task, key):
            predict = lambda p, s: meta_model.apply(  # noqa: E731
                state.meta_params, p, s, key, grid, is_training=False
            )[0][:, 0]
            params_0, model_state = meta_model.reset(key, state.meta_params, state.model_state)
            params, adapted_state = learner.adapt(state, task.support, key, num_inner_steps)
            truth = sampler.target_fn(key, grid)[:, 0]
            return truth, predict(params_0, model_state), predict(params, adapted_state)

        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_tasks))
        truth, before, after = jax.vmap(one)(batch, keys)
        return grid[:, 0], truth, before, after, batch.support.x[..., 0], batch.support.y[..., 0]

    return RegressionCurves(*curves(state, rng))


def regression_figure(curves: RegressionCurves, title: str = "") -> np.ndarray:
    """One panel per task: ground truth, support points, prediction before and after
    adaptation. Returns an ``(H, W, 3)`` uint8 image, ``H = 240`` and ``W = 240 * tasks``."""
    import matplotlib

    matplotlib.use("Agg")  # No display: render to a buffer.
    from matplotlib import pyplot as plt
    from PIL import Image

    curves = RegressionCurves(*(np.asarray(a) for a in curves))
    num_tasks = curves.truth.shape[0]
    fig, axes = plt.subplots(1, num_tasks, figsize=(3 * num_tasks, 3), dpi=80, squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(curves.grid, curves.truth[i], color="black", label="ground truth")
        ax.plot(curves.grid, curves.before[i], "--", color="tab:gray", label="before")
        ax.plot(curves.grid, curves.after[i], color="tab:red", label="after adaptation")
        ax.scatter(curves.support_x[i], curves.support_y[i], s=14, zorder=3, label="support")
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return np.asarray(Image.open(buffer).convert("RGB"))


def save_png(image: np.ndarray, path) -> None:
    """Writes an ``(H, W, 3)`` uint8 image as PNG to ``path`` (local or an epath, e.g. gs://)."""
    from etils import epath
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    epath.Path(path).write_bytes(buffer.getvalue())
