"""Meta-learned inner learning rates (Meta-SGD, MAML++'s LSLR) added to any meta-model."""

import jax
import jax.numpy as jnp

from metax.meta_models.base import MetaModel
from metax.meta_models.learned_init import learned_init
from metax.meta_models.registry import register_meta_model, tiny_mlp
from metax.validate import check_int, check_number

RATES_KEY = "lr"
RATE_LAYOUTS = ("parameter", "layer")


@register_meta_model(
    example=lambda: learned_rates(learned_init(tiny_mlp())),
    label="learned rates (Meta-SGD, LSLR)",
)
def learned_rates(
    meta_model: MetaModel,
    per: str = "parameter",
    num_steps: int = 1,
    init_rate: float = 0.01,
) -> MetaModel:
    """``meta_model`` with meta-learned inner learning rates ``meta_params["lr"]``, which the
    inner optimizer `metax.learner.learned_sgd` reads (set it as the learner's
    ``inner_optimizer``).

    * ``per="parameter"``: one rate per task-parameter entry (Meta-SGD, Li et al. 2017:
      ``phi <- phi - alpha * grad`` with ``alpha`` shaped like ``phi``).
    * ``per="layer"``: one rate per parameter array (each layer's weights and biases), as in
      MAML++'s LSLR (Antoniou et al. 2019).

    With ``num_steps=K`` each inner step ``k < K`` has its own rates (MAML++: per step); an
    inner loop longer than K uses the last step's rates for its remaining steps. ``"lr"``
    mirrors the task parameters (``meta_model.reset``'s output): leaves of shape
    ``(K, *param_shape)`` (per parameter) or ``(K,)`` (per layer), all ``init_rate`` at
    initialization. Everything else is ``meta_model``'s, which never sees ``"lr"``.

    The rates enter only through the inner optimizer's steps: second-order MAML (and
    evolution) learn them; first-order MAML gives them no gradient, and Reptile, implicit
    differentiation and EP cannot learn them (an error when the learner is built).
    """
    if per not in RATE_LAYOUTS:
        raise ValueError(f"learned_rates per must be one of {RATE_LAYOUTS}, got {per!r}.")
    check_int("learned_rates num_steps", num_steps, 1)
    check_number("learned_rates init_rate", init_rate)
    used = (meta_model.reset_keys or set()) | (meta_model.energy_keys or set())
    if RATES_KEY in used or meta_model.optimizer_keys:
        raise ValueError(
            f"learned_rates adds meta_params[{RATES_KEY!r}], which this meta-model already "
            f"uses: wrap a meta-model without learned rates."
        )

    def base(meta_params):
        return {k: v for k, v in meta_params.items() if k != RATES_KEY}

    def init(rng, sample_input):
        meta_params, meta_state = meta_model.init(rng, sample_input)
        params = jax.eval_shape(lambda: meta_model.reset(rng, meta_params, meta_state)[0])

        def rates(leaf):
            shape = (num_steps, *leaf.shape) if per == "parameter" else (num_steps,)
            return jnp.full(shape, init_rate, leaf.dtype)

        return {**meta_params, RATES_KEY: jax.tree.map(rates, params)}, meta_state

    def reset(rng, meta_params, meta_state):
        return meta_model.reset(rng, base(meta_params), meta_state)

    def apply(meta_params, params, state, rng, inputs, *, is_training=True):
        return meta_model.apply(
            base(meta_params), params, state, rng, inputs, is_training=is_training
        )

    def inner_energy(meta_params, params, state, rng, data):
        return meta_model.inner_energy(base(meta_params), params, state, rng, data)

    def outer_energy(meta_params, params, state, rng, data):
        return meta_model.outer_energy(base(meta_params), params, state, rng, data)

    return MetaModel(
        init,
        reset,
        apply,
        inner_energy,
        outer_energy,
        reset_keys=meta_model.reset_keys,
        energy_keys=meta_model.energy_keys,
        optimizer_keys=frozenset({RATES_KEY}),
        query_is_training=meta_model.query_is_training,
        input_rank=meta_model.input_rank,
    )
