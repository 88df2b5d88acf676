"""Complex synapse (CML): task weights pulled towards meta-learned anchors, learned strengths."""

import jax
import jax.numpy as jnp

from metax import energy, nn
from metax.energy import Energy
from metax.meta_models.base import MetaModel, make_energies
from metax.meta_models.registry import register_meta_model, tiny_mlp
from metax.validate import check_number


@register_meta_model(
    example=lambda: complex_synapse(tiny_mlp()),
    label="complex synapse",
)
def complex_synapse(
    model: nn.Model,
    loss_fn: Energy = energy.squared_error,
    l2_fixed: bool = False,
    log_strength_init: float = 0.0,
    reg_strength: float = 1.0,
    batch_norm: str = "transductive",
) -> MetaModel:
    """The complex synapse of the contrastive meta-learning rule (Zucchet et al., NeurIPS 2022).

    * Meta-learned: ``meta_params = {"omega": ..., "log_lambda": ...}``: each synapse's anchor
      and the log of its pull strength (same structure as the model's params; initialized to
      the model's initialization and ``log_strength_init``). With ``l2_fixed=True`` only
      ``omega`` is meta-learned and every strength is the fixed scalar ``reg_strength``
      (iMAML's regularizer).
    * Task-specific: ``params``, all of the model's parameters, reset to ``omega`` per task.
    * Inner energy: ``loss_fn`` on the support set plus
      ``1/2 sum_i exp(log_lambda_i) (params_i - omega_i)^2``. Outer energy: ``loss_fn``.

    The pull's gradient vanishes at ``params = omega``, so with one inner step from ``omega``
    ``log_lambda`` gets no meta-gradient from MAML (it does from 2 steps on, and from implicit
    differentiation or equilibrium propagation at the inner optimum, CML's setting).
    """
    check_number("complex_synapse reg_strength", reg_strength, 0)
    check_number("complex_synapse log_strength_init", log_strength_init)

    def init(rng, sample_input):
        params, state = model.init(rng, sample_input)
        meta_params = {"omega": params}
        if not l2_fixed:
            meta_params["log_lambda"] = jax.tree.map(
                lambda p: jnp.full_like(p, log_strength_init), params
            )
        return meta_params, state

    def reset(rng, meta_params, meta_state):
        del rng
        return meta_params["omega"], meta_state

    def apply(meta_params, params, state, rng, inputs, *, is_training=True):
        del meta_params
        return model.apply(params, state, rng, inputs, is_training=is_training)

    def regularizer(meta_params, params):
        if l2_fixed:
            return energy.l2_pull(params, meta_params["omega"], reg_strength)
        return energy.complex_synapse(params, meta_params["omega"], meta_params["log_lambda"])

    inner_energy, outer_energy = make_energies(apply, loss_fn, batch_norm, regularizer)
    return MetaModel(
        init,
        reset,
        apply,
        inner_energy,
        outer_energy,
        reset_keys=frozenset({"omega"}),
        energy_keys=frozenset({"omega"} if l2_fixed else {"omega", "log_lambda"}),
        query_is_training=batch_norm == "transductive",
        input_rank=model.input_rank,
    )
