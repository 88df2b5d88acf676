"""The meta-model interface: what is meta-learned, what adapts per task, and the energies."""

from collections.abc import Callable
from typing import NamedTuple, Protocol

from metax.data.base import Dataset
from metax.energy import sum_energies
from metax.types import Array, Metrics, Params, PRNGKey, State


class ApplyFn(Protocol):
    """A meta-model's ``apply(meta_params, params, state, rng, inputs, *, is_training) ->
    (outputs, state)``; ``inputs`` is ``(n, *input_shape)``."""

    def __call__(
        self,
        meta_params: Params,
        params: Params,
        state: State,
        rng: PRNGKey,
        inputs: Array,
        *,
        is_training: bool = True,
    ) -> tuple[Array, State]: ...


class EnergyFn(Protocol):
    """``energy(meta_params, params, state, rng, data) -> (loss, (state, metrics))`` of one task
    (``data`` without task axis); ``loss`` is a scalar."""

    def __call__(
        self, meta_params: Params, params: Params, state: State, rng: PRNGKey, data: Dataset
    ) -> tuple[Array, tuple[State, Metrics]]: ...


class MetaModel(NamedTuple):
    """A meta-model: pure functions over meta-parameters (``meta_params``, meta-learned in the
    outer loop) and task parameters (``params``, adapted in the inner loop).

    * ``init(rng, sample_input) -> (meta_params, meta_state)``; ``sample_input`` is one task's
      support inputs ``(n, *input_shape)``. ``meta_state`` holds model state such as BatchNorm
      statistics that are not trained by gradient.
    * ``reset(rng, meta_params, meta_state) -> (params, state)``: a task's initial task
      parameters and model state.
    * ``apply(meta_params, params, state, rng, inputs, *, is_training) -> (outputs, state)``.
    * ``inner_energy(meta_params, params, state, rng, data) -> (loss, (state, metrics))``:
      minimized over ``params`` on the support set (loss plus any regularizer).
    * ``outer_energy(meta_params, params, state, rng, data) -> (loss, (state, metrics))``:
      evaluated on the query set after adaptation; the meta-objective.

    Static facts let learners check compatibility when they are built (``None``: unknown,
    not checked): ``reset_keys``, the top-level keys of ``meta_params`` that set the task's
    initial parameters, and ``energy_keys``, those the inner energy depends on directly;
    ``optimizer_keys``, those only the inner optimizer reads (learned inner learning rates,
    see `metax.meta_models.learned_rates`); ``query_is_training``, the ``is_training`` the
    outer energy applies the model with on a query set (False under ``batch_norm="per_task"``),
    so that predictions drawn for a person match what is scored; ``input_rank``, the number of
    axes of one input example its model takes (`metax.nn.Model.input_rank`; None: any).
    """

    init: Callable[[PRNGKey, Array], tuple[Params, State]]
    reset: Callable[[PRNGKey, Params, State], tuple[Params, State]]
    apply: ApplyFn
    inner_energy: EnergyFn
    outer_energy: EnergyFn
    reset_keys: frozenset[str] | None = None
    energy_keys: frozenset[str] | None = None
    optimizer_keys: frozenset[str] = frozenset()
    query_is_training: bool = True
    input_rank: int | None = None


BATCH_NORM_MODES = ("transductive", "per_task")


def check_batch_norm_mode(batch_norm: str) -> None:
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(
            f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}: 'transductive' "
            "normalizes support and query sets with their own batch statistics (MAML paper); "
            "'per_task' keeps running statistics per task, reset from the meta-state, and "
            "normalizes the query set with them."
        )


Regularizer = Callable[[Params, Params], tuple[Array, Metrics]]


def make_energies(
    apply: Callable[..., tuple[Array, State]],
    loss_fn: Callable[[Array, Array], tuple[Array, Metrics]],
    batch_norm: str,
    regularizer: Regularizer | None = None,
) -> tuple[EnergyFn, EnergyFn]:
    """Builds ``(inner_energy, outer_energy)`` from a meta-model's ``apply`` and a loss.

    Model state semantics (BatchNorm), chosen by ``batch_norm``:

    * ``"transductive"``: the inner loop and the query set both run with ``is_training=True``,
      so each is normalized with its own batch statistics (the MAML paper's choice).
    * ``"per_task"``: the inner loop runs with ``is_training=True`` and updates the task's
      running statistics (reset from the meta-state for each task); the query set is
      normalized with those running statistics (``is_training=False``), so a query prediction
      does not depend on the other query samples.

    In both modes the task's state is discarded after the task: nothing flows back into the
    meta-state, and tasks cannot see each other's statistics. ``regularizer(meta_params,
    params)`` is added to the inner energy only.
    """
    check_batch_norm_mode(batch_norm)
    outer_is_training = batch_norm == "transductive"

    def data_energy(meta_params, params, state, rng, data, is_training):
        predictions, state = apply(meta_params, params, state, rng, data.x, is_training=is_training)
        loss, metrics = loss_fn(predictions, data.y)
        return loss, (state, metrics)

    def inner_energy(meta_params, params, state, rng, data):
        loss, (state, metrics) = data_energy(meta_params, params, state, rng, data, True)
        if regularizer is not None:
            loss, metrics = sum_energies((loss, metrics), regularizer(meta_params, params))
        return loss, (state, metrics)

    def outer_energy(meta_params, params, state, rng, data):
        return data_energy(meta_params, params, state, rng, data, outer_is_training)

    return inner_energy, outer_energy
