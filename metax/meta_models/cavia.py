"""CAVIA: the whole network is meta-learned; a context vector fed with the input adapts."""

import jax
import jax.numpy as jnp

from metax import energy, nn
from metax.energy import Energy
from metax.meta_models.base import MetaModel, make_energies
from metax.meta_models.registry import register_meta_model, tiny_mlp
from metax.validate import check_int


@register_meta_model(
    example=lambda: cavia(tiny_mlp(), embedding_dim=2),
    label="CAVIA",
)
def cavia(
    model: nn.Model,
    embedding_dim: int = 5,
    loss_fn: Energy = energy.squared_error,
    batch_norm: str = "transductive",
) -> MetaModel:
    """Fast context adaptation via meta-learning (Zintgraf et al., 2019).

    * Meta-learned: ``meta_params = {"network": ...}``, all of the model's parameters.
    * Task-specific: ``params = {"context": (embedding_dim,)}``, reset to zero for every task
      (not meta-learned), and concatenated to each input: the model sees
      ``(n, d + embedding_dim)`` inputs.
    * Inner and outer energies: ``loss_fn``; no regularizer.
    * Inputs must be flat vectors ``(n, d)``.
    """
    check_int("cavia embedding_dim", embedding_dim, 1)

    def with_context(inputs, context):
        if inputs.ndim != 2:
            raise ValueError(
                f"cavia appends its context to flat inputs of shape (n, d); got inputs of shape "
                f"{inputs.shape}. Flatten the inputs, or use gain_mod for convolutional models."
            )
        tiled = jnp.broadcast_to(context, (inputs.shape[0], embedding_dim)).astype(inputs.dtype)
        return jnp.concatenate([inputs, tiled], axis=-1)

    def init(rng, sample_input):
        params, state = model.init(rng, with_context(sample_input, jnp.zeros(embedding_dim)))
        return {"network": params}, state

    def reset(rng, meta_params, meta_state):
        del rng
        dtype = jnp.result_type(*[leaf.dtype for leaf in jax.tree.leaves(meta_params)])
        return {"context": jnp.zeros((embedding_dim,), dtype)}, meta_state

    def apply(meta_params, params, state, rng, inputs, *, is_training=True):
        return model.apply(
            meta_params["network"],
            state,
            rng,
            with_context(inputs, params["context"]),
            is_training=is_training,
        )

    inner_energy, outer_energy = make_energies(apply, loss_fn, batch_norm)
    return MetaModel(
        init,
        reset,
        apply,
        inner_energy,
        outer_energy,
        reset_keys=frozenset(),
        energy_keys=frozenset({"network"}),
        query_is_training=batch_norm == "transductive",
        input_rank=1,
    )
