"""Checks that a run's pieces fit together, done on shapes before anything is compiled."""

import jax
import jax.numpy as jnp
import numpy as np

from metax.data.base import MetaBatch
from metax.meta_models.base import MetaModel


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_meta_batch(meta_batch: MetaBatch) -> None:
    """Raises a ValueError unless ``meta_batch`` has a leading task axis: support and query
    inputs ``(tasks, n, *input_shape)``, targets ``(tasks, n, ...)``, the same ``tasks``
    throughout. (A single task, as ``sampler.sample_task`` returns it, would otherwise be read
    as many one-sample tasks.) Shapes only; fine under jit."""
    parts = {"support": meta_batch.support, "query": meta_batch.query}
    for name, part in parts.items():
        if jnp.ndim(part.x) < 3 or jnp.ndim(part.y) < 2:
            raise ValueError(
                f"The meta-batch has no task axis: its {name} inputs have shape "
                f"{tuple(jnp.shape(part.x))} and targets {tuple(jnp.shape(part.y))}, but a "
                f"meta-batch holds (tasks, samples, ...) arrays. Draw one with "
                f"metax.data.sample_meta_batch(sampler, rng, num_tasks), or give one task a "
                f"task axis with jax.tree.map(lambda a: a[None], task)."
            )
    leading = {
        f"{name}.{field}": tuple(jnp.shape(getattr(part, field))[:2])
        for name, part in parts.items()
        for field in ("x", "y")
    }
    tasks = {shape[0] for shape in leading.values()}
    samples_agree = all(leading[f"{name}.x"][1] == leading[f"{name}.y"][1] for name in parts)
    if len(tasks) > 1 or not samples_agree:
        raise ValueError(
            f"The meta-batch's arrays disagree on (tasks, samples): {leading}. Support and "
            f"query must have the same number of tasks, and inputs and targets the same number "
            f"of samples."
        )
    for field in ("x", "y"):
        support, query = getattr(meta_batch.support, field), getattr(meta_batch.query, field)
        if jnp.shape(support)[2:] != jnp.shape(query)[2:]:
            raise ValueError(
                f"The support and query sets' {'inputs' if field == 'x' else 'targets'} differ "
                f"in shape beyond (tasks, samples): support {tuple(jnp.shape(support))}, "
                f"query {tuple(jnp.shape(query))}. A task's examples all have one shape."
            )
    check_float_width(meta_batch)


def check_float_width(tree) -> None:
    """Raises a ValueError if ``tree`` holds float64 host arrays while JAX computes in float32
    (x64 disabled): JAX would silently compute them in float32. Device arrays and tracers
    already have JAX's width; shapes only, fine under jit."""
    if jax.config.read("jax_enable_x64"):
        return
    wide = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if isinstance(leaf, np.ndarray) and leaf.dtype == np.float64
    ]
    if wide:
        raise ValueError(
            f"The meta-batch holds float64 arrays ({', '.join(wide)}), but JAX computes in "
            f"float32 unless 64-bit mode is on, and would silently drop the precision. Turn it "
            f"on (jax.config.update('jax_enable_x64', True), or JAX_ENABLE_X64=1) or cast the "
            f"data to float32."
        )


def check_input_rank(meta_model: MetaModel, inputs, what: str = "one task's support set") -> None:
    """Raises a ValueError unless ``inputs`` is ``(n, *input_shape)`` with as many example
    axes as the meta-model's model takes (`metax.nn.Model.input_rank`; not checked when it
    declares none)."""
    rank = meta_model.input_rank
    if rank is not None and jnp.ndim(inputs) != 1 + rank:
        raise ValueError(
            f"The model takes examples of {rank} ax{'is' if rank == 1 else 'es'} "
            f"({'vectors' if rank == 1 else 'images (h, w, c)'}), so {what} must be "
            f"(n, *example_shape), {1 + rank} axes; got shape {tuple(jnp.shape(inputs))}. "
            f"{_rank_hint(jnp.ndim(inputs) - 1 - rank, rank)}"
        )


def _rank_hint(extra: int, rank: int) -> str:
    if extra == 1:
        return (
            "Has it a task axis? Pick one task, e.g. jax.tree.map(lambda a: a[0], batch.support)."
        )
    if rank == 1:
        return "Flatten each example first: metax.nn.sequential(flat=metax.nn.flatten(), ...)."
    return "Give each example the shape the model was built for."


def check_model_fits_data(meta_model: MetaModel, episode: MetaBatch) -> None:
    """Raises a ValueError naming both shapes unless ``meta_model`` maps one task's support
    inputs ``episode.support.x: (n, *input_shape)`` to predictions that fit its targets:
    ``(n, *target_shape)`` for float targets, ``(n, classes)`` with ``classes`` above every
    integer label (checked when the labels are concrete, i.e. not under jit). Works on shapes
    only (`jax.eval_shape`); costs no compilation."""
    x, y = episode.support.x, episode.support.y
    check_input_rank(meta_model, x, "a task's inputs")
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
        labels = [y, episode.query.y]
        concrete = not any(isinstance(labels_, jax.core.Tracer) for labels_ in labels)
        classes = max(int(np.max(labels_)) for labels_ in labels) + 1 if concrete else None
        classes = out.shape[-1] if classes is None else classes
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
