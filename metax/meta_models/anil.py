"""ANIL: a meta-learned shared body; only the head adapts per task."""

from metax import energy, nn
from metax.energy import Energy
from metax.meta_models.base import MetaModel, make_energies
from metax.meta_models.registry import register_meta_model, tiny_mlp


@register_meta_model(
    example=lambda: anil(tiny_mlp(4, activate_final=True), nn.linear(1)),
    label="ANIL",
)
def anil(
    body: nn.Model,
    head: nn.Model,
    loss_fn: Energy = energy.squared_error,
    batch_norm: str = "transductive",
) -> MetaModel:
    """Almost No Inner Loop (Raghu et al., 2020, "Rapid learning or feature reuse?").

    * Meta-learned: ``meta_params = {"body": ..., "head_init": ...}``: the body's parameters,
      shared by all tasks, and the head's initialization.
    * Task-specific: ``params = {"head": ...}``, reset to ``head_init`` per task.
    * Inner and outer energies: ``loss_fn`` on ``head(body(x))``; no regularizer.
    * Model state ``{"body": ..., "head": ...}``: see ``batch_norm`` in `make_energies`.

    The body receives meta-gradient directly (it shapes the features of the query set) and,
    in second-order MAML, through the adaptation of the head as well.
    """

    network = nn.sequential(body=body, head=head)

    def init(rng, sample_input):
        params, state = network.init(rng, sample_input)
        return {"body": params["body"], "head_init": params["head"]}, state

    def reset(rng, meta_params, meta_state):
        del rng
        return {"head": meta_params["head_init"]}, meta_state

    def apply(meta_params, params, state, rng, inputs, *, is_training=True):
        network_params = {"body": meta_params["body"], "head": params["head"]}
        return network.apply(network_params, state, rng, inputs, is_training=is_training)

    inner_energy, outer_energy = make_energies(apply, loss_fn, batch_norm)
    return MetaModel(
        init,
        reset,
        apply,
        inner_energy,
        outer_energy,
        reset_keys=frozenset({"head_init"}),
        energy_keys=frozenset({"body"}),
        query_is_training=batch_norm == "transductive",
        input_rank=body.input_rank,
    )
