"""Gain modulation (CML): a meta-learned body whose hidden units get task-specific gains, shifts."""

import jax.numpy as jnp

from metax import energy, nn
from metax.energy import Energy
from metax.meta_models.base import MetaModel, make_energies
from metax.meta_models.registry import register_meta_model, tiny_mlp
from metax.validate import check_optional_number


@register_meta_model(
    example=lambda: gain_mod(tiny_mlp(4, activate_final=True), nn.linear(1)),
    regularized_example=lambda: gain_mod(
        tiny_mlp(4, activate_final=True), nn.linear(1), reg_strength=0.1
    ),
    label="gain modulation",
)
def gain_mod(
    body: nn.Model,
    head: nn.Model,
    loss_fn: Energy = energy.squared_error,
    adapt_head: bool = True,
    reg_strength: float | None = None,
    batch_norm: str = "transductive",
) -> MetaModel:
    """Gain modulation as in the contrastive meta-learning rule (Zucchet et al., NeurIPS 2022).

    ``body`` is a model that declares where it can be modulated (`metax.nn.Model.modulation`:
    ``nn.mlp``, gains/shifts on its hidden layers' pre-activations; ``nn.conv4``, on its
    BatchNorm outputs; ``nn.resnet12``, on each block's output before its nonlinearity);
    ``head`` maps the body's features to outputs.

    * Meta-learned: ``meta_params = {"body", "gain_init", "shift_init", "head_init"}`` with
      gains initialized to one and shifts to zero (dicts keyed by hidden layer); with
      ``adapt_head=False``, ``"head"`` replaces ``"head_init"`` and is used as is.
    * Task-specific: ``params = {"gain", "shift"}`` (plus ``"head"`` when ``adapt_head``),
      reset to their meta-learned initializations per task.
    * Inner energy: ``loss_fn``, plus ``reg_strength / 2 * ||params - initializations||^2``
      when ``reg_strength`` is set. Outer energy: ``loss_fn``.
    * Model state ``{"body", "head"}``: see ``batch_norm`` in `make_energies`.
    """
    check_optional_number("gain_mod reg_strength", reg_strength, 0)
    modulation = body.modulation
    if modulation is None:
        raise ValueError(
            "gain_mod needs a body that declares where it can be modulated (a metax.nn.Model "
            "with `modulation`: nn.mlp, nn.conv4 or nn.resnet12); this body declares none."
        )
    head_key = "head_init" if adapt_head else "head"

    network = nn.sequential(body=body, head=head)

    def init(rng, sample_input):
        params, state = network.init(rng, sample_input)
        shapes = modulation(params["body"])
        if not shapes:
            raise ValueError(
                "gain_mod needs a body with hidden layers to modulate; this body has none "
                "(e.g. nn.mlp without hidden_sizes)."
            )
        meta_params = {
            "body": params["body"],
            "gain_init": {name: jnp.ones(shape) for name, shape in shapes.items()},
            "shift_init": {name: jnp.zeros(shape) for name, shape in shapes.items()},
            head_key: params["head"],
        }
        return meta_params, state

    def initial_params(meta_params):
        params = {"gain": meta_params["gain_init"], "shift": meta_params["shift_init"]}
        if adapt_head:
            params["head"] = meta_params["head_init"]
        return params

    def reset(rng, meta_params, meta_state):
        del rng
        return initial_params(meta_params), meta_state

    def apply(meta_params, params, state, rng, inputs, *, is_training=True):
        head_params = params["head"] if adapt_head else meta_params["head"]
        return network.apply(
            {"body": meta_params["body"], "head": head_params},
            state,
            rng,
            inputs,
            is_training=is_training,
            layer_kwargs={"body": {"gain": params["gain"], "shift": params["shift"]}},
        )

    def regularizer(meta_params, params):
        return energy.l2_pull(params, initial_params(meta_params), reg_strength)

    inner_energy, outer_energy = make_energies(
        apply, loss_fn, batch_norm, regularizer if reg_strength else None
    )
    init_keys = {"gain_init", "shift_init"} | ({"head_init"} if adapt_head else set())
    energy_keys = {"body"} | (set() if adapt_head else {"head"})
    return MetaModel(
        init,
        reset,
        apply,
        inner_energy,
        outer_energy,
        reset_keys=frozenset(init_keys),
        energy_keys=frozenset(energy_keys | (init_keys if reg_strength else set())),
        query_is_training=batch_norm == "transductive",
        input_rank=body.input_rank,
    )
