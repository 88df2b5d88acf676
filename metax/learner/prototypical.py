"""Prototypical networks (Snell et al., 2017): a metric-based learner with no inner loop."""

import jax
import jax.numpy as jnp
import optax

from metax import energy, nn
from metax.checks import check_meta_batch
from metax.data.base import Dataset, MetaBatch, task_keys
from metax.learner.base import Learner, MetaState, averaged_meta_step, prefix
from metax.learner.inner import TaskChunk, check_task_chunk, map_tasks, resolve_task_chunk
from metax.learner.registry import register_learner
from metax.types import Array, Metrics, Params, PRNGKey, State

EVAL_SETTING = "prototypes"


def prototype_logits(support_embeddings: Array, labels: Array, query_embeddings: Array) -> Array:
    """Logits ``-||q - c_k||^2`` of each query embedding ``(m, d)`` for each class prototype
    ``c_k`` (the mean support embedding of class k; ``support_embeddings (n, d)``, integer
    ``labels (n,)``). Returns ``(m, n)``: classes ``0 .. n - 1``, those absent from the support
    set at ``-inf`` (so the class count needs no static argument)."""
    n = labels.shape[0]
    one_hot = jax.nn.one_hot(labels, n, dtype=support_embeddings.dtype)
    counts = one_hot.sum(0)
    prototypes = one_hot.T @ support_embeddings / jnp.maximum(counts, 1)[:, None]
    distances = jnp.sum((query_embeddings[:, None, :] - prototypes[None, :, :]) ** 2, -1)
    return jnp.where(counts > 0, -distances, -jnp.inf)


@register_learner(
    example=lambda model, **kw: prototypical(model, **{"outer_optimizer": optax.sgd(0.1), **kw}),
    takes="model",
    tasks="classification",
)
def prototypical(
    model: nn.Model,
    outer_optimizer: optax.GradientTransformation = optax.adam(1e-3),
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """Prototypical networks: ``model`` embeds inputs (e.g. ``conv4`` without a head, outputs
    ``(n, d)``); each class's prototype is the mean embedding of its support samples, and a
    query is classified by softmax over negative squared Euclidean distances to the prototypes.
    The meta-gradient is that of the query cross-entropy, averaged over tasks, applied with
    ``outer_optimizer``. Classification tasks only (integer labels).

    ``meta_params = {"embedding": params}``; BatchNorm (if any) normalizes the support and the
    query sets with their own batch statistics, and running statistics are not kept.
    Evaluation has no inner steps: it runs once, reported as ``eval/prototypes/<metric>``.
    ``task_chunk``: as for every learner (`metax.learner.inner.TaskChunk`).

    Metrics of ``meta_step``: ``outer/loss``, ``outer/accuracy`` (query set), ``meta_grad_norm``.
    """
    check_task_chunk(task_chunk, "prototypical")
    if not isinstance(model, nn.Model):
        raise TypeError(
            f"prototypical needs the embedding model (a metax.nn.Model, e.g. metax.nn.conv4()), "
            f"got {type(model).__name__}: it meta-learns the model's parameters itself."
        )

    def embed(meta_params: Params, state: State, rng: PRNGKey, x: Array) -> Array:
        features, _ = model.apply(meta_params["embedding"], state, rng, x, is_training=True)
        if features.ndim != 2:
            raise ValueError(
                f"prototypical needs a model that embeds each input as a vector, outputs "
                f"(n, d); got outputs of shape {features.shape}. Flatten them (metax.nn.flatten "
                f"after the body in metax.nn.sequential)."
            )
        return features

    def query_metrics(meta_params, model_state, task: MetaBatch, rng) -> tuple[Array, Metrics]:
        k_support, k_query = jax.random.split(rng)
        logits = prototype_logits(
            embed(meta_params, model_state, k_support, task.support.x),
            task.support.y,
            embed(meta_params, model_state, k_query, task.query.x),
        )
        return energy.cross_entropy(logits, task.query.y)

    def task_loss(meta_params, model_state, task, rng):
        loss, metrics = query_metrics(meta_params, model_state, task, rng)
        return loss, prefix(metrics, "outer")

    def check_classification(support: Dataset) -> None:
        if not jnp.issubdtype(support.y.dtype, jnp.integer):
            raise ValueError(
                f"prototypical classifies: it needs integer class labels, got {support.y.dtype} "
                f"targets of shape {tuple(support.y.shape)} (regression tasks need a learner "
                f"with an inner loop, e.g. maml)."
            )

    def init(rng: PRNGKey, meta_batch: MetaBatch) -> MetaState:
        check_meta_batch(meta_batch)
        check_classification(meta_batch.support)
        params, model_state = model.init(rng, meta_batch.support.x[0])
        meta_params = {"embedding": params}
        return MetaState(
            jnp.zeros((), jnp.int32), meta_params, model_state, outer_optimizer.init(meta_params)
        )

    outer_step = averaged_meta_step(outer_optimizer, task_loss=task_loss, task_chunk=task_chunk)

    def meta_step(state: MetaState, meta_batch: MetaBatch, rng: PRNGKey):
        check_classification(meta_batch.support)
        return outer_step(state, meta_batch, rng)

    def evaluate(state: MetaState, meta_batch: MetaBatch, rng: PRNGKey, setting=None) -> Metrics:
        del setting  # Nothing adapts: one evaluation.
        check_meta_batch(meta_batch)
        n = meta_batch.support.x.shape[0]
        chunk = resolve_task_chunk(task_chunk, n, state.meta_params)
        return map_tasks(
            lambda task, key: query_metrics(state.meta_params, state.model_state, task, key)[1],
            meta_batch,
            task_keys(rng, n),
            task_chunk=chunk if chunk and n % chunk == 0 else None,
        )

    return Learner(init, meta_step, evaluate, eval_settings=lambda _: {EVAL_SETTING: None})
