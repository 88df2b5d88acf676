"""The meta-model interface: what is meta-learned, what adapts per task, and the energies."""

from collections.abc import Callable
from typing import NamedTuple

from metax.data.base import Dataset
from metax.types import Array, Metrics, Params, PRNGKey, State

EnergyFn = Callable[[Params, Params, State, PRNGKey, Dataset], tuple[Array, tuple[State, Metrics]]]


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
    """

    init: Callable[[PRNGKey, Array], tuple[Params, State]]
    reset: Callable[[PRNGKey, Params, State], tuple[Params, State]]
    apply: Callable[..., tuple[Array, State]]
    inner_energy: EnergyFn
    outer_energy: EnergyFn
