"""Pictures for TensorBoard and the workdir: image grids of few-shot episodes, and for
regression tasks the ground truth, support points and predictions before and after
adaptation."""

import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metax.data.base import MetaBatch, TaskSampler, sample_meta_batch, task_keys

_PAD = 4
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


def episode_grid(episode: MetaBatch, predictions: np.ndarray | None = None) -> np.ndarray:
    """One task's episode as an ``(H, W, 3)`` uint8 image: a row per label (written at its
    left), its support images, a gap, then its query images (images in [0, 1]). With
    ``predictions`` (the predicted class of each query, ``(queries,)``), each query is framed
    green where it is right and red, with the predicted class above it, where it is wrong."""
    from PIL import Image, ImageDraw

    support_x, support_y = np.asarray(episode.support.x), np.asarray(episode.support.y)
    query_x, query_y = np.asarray(episode.query.x), np.asarray(episode.query.y)
    labels = np.unique(np.concatenate([support_y, query_y]))
    h, w = support_x.shape[1:3]
    cell_h, cell_w = h * _SCALE + _PAD, w * _SCALE + _PAD
    shots = max(int(np.sum(support_y == label)) for label in labels)
    queries = max(int(np.sum(query_y == label)) for label in labels)
    query_left = _LABEL_WIDTH + shots * cell_w + 3 * _PAD
    header = _HEADER_HEIGHT * (2 if predictions is not None else 1)
    canvas = Image.new(
        "RGB", (query_left + queries * cell_w, header + len(labels) * cell_h), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((_LABEL_WIDTH, 1), "support", fill=(0, 0, 160))
    draw.text((query_left, 1), "query", fill=(160, 0, 0))
    if predictions is not None:
        predictions = np.asarray(predictions)
        right = int(np.sum(predictions == query_y))
        draw.text(
            (query_left, _HEADER_HEIGHT),
            f"after adaptation: {right}/{len(query_y)} right (green), wrong in red",
            fill=(0, 0, 0),
        )

    def tile(image):
        pixels = np.clip(np.asarray(image, np.float32) * 255, 0, 255).astype(np.uint8)
        pixels = np.broadcast_to(pixels, (h, w, 3)) if pixels.shape[-1] == 1 else pixels
        return Image.fromarray(np.ascontiguousarray(pixels)).resize((w * _SCALE, h * _SCALE))

    for row, label in enumerate(labels):
        top = header + row * cell_h
        draw.text((2, top + cell_h // 2 - 6), str(int(label)), fill=(0, 0, 0))
        for column, image in enumerate(support_x[support_y == label]):
            canvas.paste(tile(image), (_LABEL_WIDTH + column * cell_w, top))
        for column, index in enumerate(np.flatnonzero(query_y == label)):
            left = query_left + column * cell_w
            canvas.paste(tile(query_x[index]), (left, top))
            if predictions is None:
                continue
            ok = predictions[index] == label
            color = (0, 170, 0) if ok else (220, 0, 0)
            box = (left - 1, top - 1, left + w * _SCALE, top + h * _SCALE)
            draw.rectangle(box, outline=color, width=2)
            if not ok:
                draw.text((left + 3, top + 2), str(int(predictions[index])), fill=color)
    return np.asarray(canvas)


class RegressionCurves(NamedTuple):
    """Arrays for `regression_figure`: ``grid (points,)``, ``truth``, ``before`` and
    ``after`` ``(tasks, points)``, support ``support_x`` and ``support_y`` ``(tasks, shots)``,
    and each task's query-set mean squared error before and after adaptation,
    ``query_mse_before`` and ``query_mse_after`` ``(tasks,)``."""

    grid: np.ndarray
    truth: np.ndarray
    before: np.ndarray
    after: np.ndarray
    support_x: np.ndarray
    support_y: np.ndarray
    query_mse_before: np.ndarray
    query_mse_after: np.ndarray


def has_regression_curves(learner, sampler: TaskSampler) -> bool:
    """Whether `regression_curves` can draw these tasks: a sampler with a ground truth
    (``target_fn``) and a learner that exposes ``adapt`` and its meta-model."""
    return (
        getattr(sampler, "target_fn", None) is not None
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
    support set (``learner.adapt``), and their query-set errors. Scalar inputs and outputs
    only. One jit compilation; returns device arrays (``metax.train.fetch`` copies them on
    several processes)."""
    meta_model, adapt, target_fn = learner.meta_model, learner.adapt, sampler.target_fn
    if meta_model is None or adapt is None or target_fn is None:
        raise ValueError("regression_curves needs `has_regression_curves` learners and tasks.")

    @jax.jit
    def curves(state, rng):
        batch = sample_meta_batch(sampler, rng, num_tasks)
        inputs = jnp.concatenate([batch.support.x, batch.query.x], axis=1)
        grid = jnp.linspace(jnp.min(inputs), jnp.max(inputs), num_points)[:, None]

        def one(task, key):
            def predict(p, s, x):
                outputs = meta_model.apply(
                    state.meta_params, p, s, key, x, is_training=meta_model.query_is_training
                )[0]
                return outputs[:, 0]

            def query_mse(p, s):
                return jnp.mean((predict(p, s, task.query.x) - task.query.y[:, 0]) ** 2)

            params_0, model_state = meta_model.reset(key, state.meta_params, state.model_state)
            params, adapted_state = adapt(state, task.support, key, num_inner_steps)
            truth = target_fn(key, grid)[:, 0]
            return (
                truth,
                predict(params_0, model_state, grid),
                predict(params, adapted_state, grid),
                query_mse(params_0, model_state),
                query_mse(params, adapted_state),
            )

        keys = task_keys(rng, num_tasks)
        truth, before, after, mse_before, mse_after = jax.vmap(one)(batch, keys)
        support_x, support_y = batch.support.x[..., 0], batch.support.y[..., 0]
        return grid[:, 0], truth, before, after, support_x, support_y, mse_before, mse_after

    return RegressionCurves(*curves(state, rng))


def _render(fig) -> np.ndarray:
    """A matplotlib `Figure` (object API: no pyplot, no backend switch) as ``(H, W, 3)``."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return np.asarray(Image.open(buffer).convert("RGB"))


REGRESSION_PANEL_PIXELS = (300, 240)  # (height, width) of one task's panel.


def regression_figure(curves: RegressionCurves, title: str = "") -> np.ndarray:
    """One panel per task: ground truth, support points, prediction before and after
    adaptation, the query MSE before and after in the panel's title, and one legend below the
    panels. Returns an ``(H, W, 3)`` uint8 image, ``H = 300`` and ``W = 240 * tasks``."""
    from matplotlib.figure import Figure

    curves = RegressionCurves(*(np.asarray(a) for a in curves))
    num_tasks = curves.truth.shape[0]
    height, width = REGRESSION_PANEL_PIXELS
    fig = Figure(figsize=(width * num_tasks / 80, height / 80), dpi=80)
    axes = fig.subplots(1, num_tasks, squeeze=False, sharey=True)[0]
    for i, ax in enumerate(axes):
        ax.plot(curves.grid, curves.truth[i], color="black", label="ground truth")
        ax.plot(curves.grid, curves.before[i], "--", color="tab:gray", label="before adaptation")
        ax.plot(curves.grid, curves.after[i], color="tab:red", label="after adaptation")
        ax.scatter(curves.support_x[i], curves.support_y[i], s=14, zorder=3, label="support")
        ax.set_title(
            f"task {i}: query MSE\n{curves.query_mse_before[i]:.3g} -> "
            f"{curves.query_mse_after[i]:.3g}",
            fontsize=8,
        )
        ax.set_xlabel("x", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("y", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _render(fig)


def can_draw_adapted_episode(learner, episode: MetaBatch) -> bool:
    """Whether `adapted_query_predictions` applies: an image classification episode and a
    learner that exposes ``adapt`` and its meta-model."""
    return (
        is_image_episode(episode) and learner.adapt is not None and learner.meta_model is not None
    )


def adapted_query_predictions(
    learner, state, episode: MetaBatch, rng: jax.Array, num_inner_steps: int
) -> jax.Array:
    """The predicted class of each query of one episode (no task axis) after
    ``num_inner_steps`` inner steps on its support set: ``(queries,)`` int32, a device array.
    The query set is applied as the outer energy applies it (``query_is_training``)."""
    meta_model = learner.meta_model

    @jax.jit
    def predictions(state, episode, rng):
        params, adapted_state = learner.adapt(state, episode.support, rng, num_inner_steps)
        logits = meta_model.apply(
            state.meta_params,
            params,
            adapted_state,
            rng,
            episode.query.x,
            is_training=meta_model.query_is_training,
        )[0]
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return predictions(state, episode, rng)


def save_png(image: np.ndarray, path) -> None:
    """Writes an ``(H, W, 3)`` uint8 image as PNG to ``path`` (local or an epath, e.g. gs://)."""
    from etils import epath
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    epath.Path(path).write_bytes(buffer.getvalue())
