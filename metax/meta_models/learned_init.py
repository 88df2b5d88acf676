"""Learned initialization (MAML): the meta-parameters are the base model's initial weights."""

from metax import energy, nn
from metax.energy import Energy
from metax.meta_models.base import MetaModel, make_energies
from metax.meta_models.registry import register_meta_model, tiny_mlp
from metax.validate import check_optional_number


@register_meta_model(
    example=lambda: learned_init(tiny_mlp()),
    regularized_example=lambda: learned_init(tiny_mlp(), reg_strength=1.0),
    label="learned init",
)
def learned_init(
    model: nn.Model,
    loss_fn: Energy = energy.squared_error,
    reg_strength: float | None = None,
    batch_norm: str = "transductive",
) -> MetaModel:
    """MAML's meta-model (Finn et al., 2017), optionally with iMAML's proximal regularizer.

    * Meta-learned: ``meta_params = {"init": params_0}``, the model's initial parameters.
    * Task-specific: ``params``, all of the model's parameters, reset to ``params_0`` per task.
    * Inner energy: ``loss_fn`` on the support set, plus
      ``reg_strength / 2 * ||params - params_0||^2`` when ``reg_strength`` is set (iMAML).
    * Outer energy: ``loss_fn`` on the query set.
    * Model state (BatchNorm statistics): see ``batch_norm`` in `make_energies`.
    """
    check_optional_number("learned_init reg_strength", reg_strength, 0)

    def init(rng, sample_input):
        params, state = model.init(rng, sample_input)
        return {"init": params}, state

    def reset(rng, meta_params, meta_state):
        del rng
        return meta_params["init"], meta_state

    def apply(meta_params, params, state, rng, inputs, *, is_training=True):
        del meta_params
        return model.apply(params, state, rng, inputs, is_training=is_training)

    def regularizer(meta_params, params):
        return energy.l2_pull(params, meta_params["init"], reg_strength)

    inner_energy, outer_energy = make_energies(
        apply, loss_fn, batch_norm, regularizer if reg_strength else None
    )
    return MetaModel(
        init,
        reset,
        apply,
        inner_energy,
        outer_energy,
        reset_keys=frozenset({"init"}),
        energy_keys=frozenset({"init"} if reg_strength else ()),
        query_is_training=batch_norm == "transductive",
        input_rank=model.input_rank,
    )
