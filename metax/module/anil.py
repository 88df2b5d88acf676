"""ANIL: a meta-learned shared body; only the head adapts per task."""

import gin
import jax
import jax.numpy as jnp

from metax import energy, nn
from metax.energy import Energy
from metax.module.base import MetaModel, make_energies


@gin.register(module="metax.module")
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

    def init(rng, sample_input):
        k_body, k_head = jax.random.split(rng)
        body_params, body_state = body.init(k_body, sample_input)
        features = jax.eval_shape(
            lambda p, s, x: body.apply(p, s, None, x, is_training=False)[0],
            body_params,
            body_state,
            sample_input,
        )
        head_params, head_state = head.init(k_head, jnp.zeros(features.shape, features.dtype))
        meta_params = {"body": body_params, "head_init": head_params}
        return meta_params, {"body": body_state, "head": head_state}

    def reset(rng, meta_params, meta_state):
        del rng
        return {"head": meta_params["head_init"]}, meta_state

    def apply(meta_params, params, state, rng, inputs, *, is_training=True):
        k_body, k_head = jax.random.split(rng)
        features, body_state = body.apply(
            meta_params["body"], state["body"], k_body, inputs, is_training=is_training
        )
        outputs, head_state = head.apply(
            params["head"], state["head"], k_head, features, is_training=is_training
        )
        return outputs, {"body": body_state, "head": head_state}

    inner_energy, outer_energy = make_energies(apply, loss_fn, batch_norm)
    return MetaModel(
        init,
        reset,
        apply,
        inner_energy,
        outer_energy,
        reset_keys=frozenset({"head_init"}),
        energy_keys=frozenset({"body"}),
    )
