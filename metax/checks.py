"""Checks that a run's pieces fit together, done on shapes before anything is compiled."""

import jax
import numpy as np

from metax.data.base import MetaBatch
from metax.module.base import MetaModel


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_model_fits_data(meta_model: MetaModel, episode: MetaBatch) -> None:
    """Raises a ValueError naming both shapes unless ``meta_model`` maps one task's support
    inputs ``episode.train.x: (n, *input_shape)`` to predictions that fit its targets:
    ``(n, *target_shape)`` for float targets, ``(n, classes)`` with ``classes`` above every
    integer label. Works on shapes only (`jax.eval_shape`); costs no compilation."""
    x, y = episode.train.x, np.asarray(episode.train.y)
    key = jax.random.key(0)
    try:
        meta_params, state = jax.eval_shape(meta_model.init, key, x)
        out = jax.eval_shape(
            lambda mp, s: meta_model.apply(mp, *meta_model.reset(key, mp, s), key, x)[0],
            meta_params,
            state,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The model cannot be applied to the tasks' inputs of shape {tuple(x.shape)} "
            f"(support set of one task): {_first_line(error)}. Use a model made for this data "
            f"(e.g. conv4 for images, mlp for vectors)."
        ) from None
    if np.issubdtype(y.dtype, np.integer):
        classes = int(y.max()) + 1
        if out.shape[:-1] != y.shape or out.shape[-1] < classes:
            raise ValueError(
                f"The model outputs shape {tuple(out.shape)} but the tasks are {classes}-way "
                f"classification with labels of shape {tuple(y.shape)}: it needs "
                f"{tuple(y.shape) + (classes,)}. Set the output size of its last layer to "
                f"{classes} (in the Omniglot configs: WAYS = {classes})."
            )
    elif out.shape != y.shape:
        raise ValueError(
            f"The model outputs shape {tuple(out.shape)} but the tasks' targets have shape "
            f"{tuple(y.shape)}. Set the output size of its last layer to match "
            f"(e.g. metax.nn.mlp.out_features = {y.shape[-1] if y.ndim > 1 else 1})."
        )
