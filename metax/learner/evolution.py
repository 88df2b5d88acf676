"""Evolution strategies from evosax searching the meta-parameters (no meta-gradient)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.checks import check_meta_batch
from metax.data.base import MetaBatch, num_tasks, task_keys
from metax.learner.base import (
    Learner,
    MetaState,
    check_learner_inputs,
    init_meta_state,
    inner_loop_learner,
)
from metax.learner.inner import InnerLoop, TaskChunk, adapt_and_score, map_tasks, resolve_task_chunk
from metax.learner.registry import register_learner
from metax.meta_models.base import MetaModel
from metax.validate import check_int


@register_learner(
    example=lambda meta_model, **kw: evolution(
        meta_model,
        **{"population_size": 4, "inner_optimizer": optax.sgd(0.05), "num_inner_steps": 2, **kw},
    ),
    label="`evolution` (any evosax strategy)",
)
def evolution(
    meta_model: MetaModel,
    strategy: str = "Open_ES",
    population_size: int = 16,
    inner_optimizer: optax.GradientTransformation = optax.sgd(0.01),
    num_inner_steps: int = 1,
    inner_batch_size: int | None = None,
    strategy_kwargs: dict | None = None,
    strategy_params: dict | None = None,
    task_chunk: TaskChunk = "auto",
) -> Learner:
    """An evosax strategy (by its class name in ``evosax.algorithms``: ``"Open_ES"``,
    ``"CMA_ES"``, ``"SNES"``, ...) searching the meta-parameters; works with every meta-model.

    The fitness of a population member is the outer energy after adaptation, averaged over the
    meta-batch (minimized). Members are vmapped, tasks mapped as ``task_chunk`` says
    (`metax.learner.inner.TaskChunk`); the task axis is the sharded one. ``strategy_kwargs``
    go to the strategy's constructor (e.g. ``optimizer``,
    ``std_schedule`` for Open_ES); ``strategy_params`` replace fields of its
    ``default_params`` (e.g. ``{"std_init": 0.1}`` for CMA_ES). The `MetaState` holds the
    strategy's mean as ``meta_params`` and its state as ``opt_state``.

    Metrics: ``outer/loss`` (mean fitness of the population), ``fitness_best``,
    ``inner/loss_before`` and ``inner/loss_after`` (averaged over members and tasks).
    """
    # Imported here: importing evosax initializes JAX's backend, which must wait for
    # jax.distributed.initialize in multi-process runs.
    from evosax import algorithms

    check_learner_inputs(meta_model, None, "evolution")
    if not hasattr(algorithms, strategy):
        names = sorted(n for n in dir(algorithms) if n[0].isupper())
        raise ValueError(f"evolution strategy {strategy!r} is not in evosax.algorithms: {names}.")
    check_int("evolution population_size", population_size, 2)
    inner = InnerLoop(
        optimizer=inner_optimizer,
        num_steps=num_inner_steps,
        batch_size=inner_batch_size,
        owner="evolution",
    )
    strategy_cls = getattr(algorithms, strategy)
    strategy_kwargs = dict(strategy_kwargs or {})

    def make_strategy(meta_params):
        # The template only gives the structure and shapes; concrete zeros keep it static.
        template = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), meta_params)
        es = strategy_cls(population_size=population_size, solution=template, **strategy_kwargs)
        params = es.default_params
        if strategy_params:
            params = params.replace(**{k: jnp.asarray(v) for k, v in strategy_params.items()})
        return es, params

    def task_fitness(meta_params, model_state, task, rng):
        loss, inner_metrics, _ = adapt_and_score(
            meta_model, inner, meta_params, model_state, task, rng
        )
        return loss, inner_metrics

    def member_fitness(meta_params, model_state, meta_batch, keys):
        losses, inner_metrics = map_tasks(
            lambda task, key: task_fitness(meta_params, model_state, task, key),
            meta_batch,
            keys,
            task_chunk=resolve_task_chunk(task_chunk, keys.shape[0], meta_params),
        )
        return jnp.mean(losses), jax.tree.map(jnp.mean, inner_metrics)

    def init(rng, meta_batch: MetaBatch) -> MetaState:
        k_model, k_es = jax.random.split(rng)

        def strategy_init(meta_params):
            es, params = make_strategy(meta_params)
            return es.init(k_es, meta_params, params)

        return init_meta_state(meta_model, strategy_init, k_model, meta_batch)

    def meta_step(state: MetaState, meta_batch: MetaBatch, rng):
        check_meta_batch(meta_batch)
        es, params = make_strategy(state.meta_params)
        k_ask, k_tell, k_tasks = jax.random.split(rng, 3)
        population, es_state = es.ask(k_ask, state.opt_state, params)
        keys = task_keys(k_tasks, num_tasks(meta_batch))  # Common random numbers.
        fitness, inner_metrics = jax.vmap(member_fitness, in_axes=(0, None, None, None))(
            population, state.model_state, meta_batch, keys
        )
        es_state, _ = es.tell(k_tell, population, fitness, es_state, params)
        metrics = {
            "outer/loss": jnp.mean(fitness),
            "fitness_best": jnp.min(fitness),
            **{f"inner/{k}": jnp.mean(v) for k, v in inner_metrics.items() if k != "grad_norm"},
        }
        new_state = MetaState(
            step=state.step + 1,
            meta_params=es.get_mean(es_state),
            model_state=state.model_state,
            opt_state=es_state,
        )
        return new_state, metrics

    return inner_loop_learner(meta_model, inner, init, meta_step, task_chunk, "evolution")
