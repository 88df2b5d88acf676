"""Which learner works with which meta-model, found by building each pair (one source of truth
for the table in docs/api.md: ``python -m metax.learner.compatibility`` prints it)."""

from collections.abc import Callable

import jax.numpy as jnp

from metax import meta_models, nn
from metax.learner.eqprop import eqprop
from metax.learner.evolution import evolution
from metax.learner.implicit import implicit
from metax.learner.maml import maml
from metax.learner.optimizers import learned_sgd
from metax.learner.reptile import buffered_reptile, reptile

LEARNERS: dict[str, Callable] = {
    "`maml` (second order, first order, truncated, multi-step loss)": maml,
    "`reptile`": reptile,
    "`buffered_reptile`": buffered_reptile,
    "`implicit` (CG, GMRES, BiCGSTAB, recurrent backprop, T1T2)": implicit,
    "`eqprop` (and symmetric)": eqprop,
    "`evolution` (any evosax strategy)": evolution,
}


def _meta_models(reg_strength: float | None) -> dict[str, meta_models.MetaModel | None]:
    """Each built-in meta-model on a small MLP; with ``reg_strength`` the variants that take it
    (None where a meta-model has no such option)."""
    mlp = nn.mlp([4], 1, activation=jnp.tanh)
    body, head = nn.mlp([4], 4, activate_final=True), nn.linear(1)
    regularized = {} if reg_strength is None else {"reg_strength": reg_strength}
    return {
        "learned init": meta_models.learned_init(mlp, **regularized),
        "ANIL": None if regularized else meta_models.anil(body, head),
        "CAVIA": None if regularized else meta_models.cavia(mlp),
        "complex synapse": None if regularized else meta_models.complex_synapse(mlp),
        "gain modulation": meta_models.gain_mod(body, head, **regularized),
        "learned rates (Meta-SGD, LSLR)": None
        if regularized
        else meta_models.learned_rates(meta_models.learned_init(mlp)),
    }


def _builds(make: Callable, meta_model) -> bool:
    if meta_model is None:
        return False
    kwargs = {"inner_optimizer": learned_sgd()} if meta_model.optimizer_keys else {}
    try:
        make(meta_model, **kwargs)
    except ValueError:
        return False
    return True


def compatibility() -> dict[str, dict[str, str]]:
    """``{learner: {meta-model: "yes" | "with `reg_strength`" | "no"}}``: whether the learner
    can be built with the meta-model as is, only with its ``reg_strength`` option, or not."""
    plain, regularized = _meta_models(None), _meta_models(1.0)
    table = {}
    for learner_name, make in LEARNERS.items():
        row = {}
        for name, meta_model in plain.items():
            if _builds(make, meta_model):
                row[name] = "yes"
            elif _builds(make, regularized[name]):
                row[name] = "with `reg_strength`"
            else:
                row[name] = "no"
        table[learner_name] = row
    return table


def markdown_table() -> str:
    """`compatibility` as the markdown table of docs/api.md."""
    table = compatibility()
    columns = list(next(iter(table.values())))
    lines = [
        "| learner \\ meta-model | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    lines += [f"| {learner} | " + " | ".join(row.values()) + " |" for learner, row in table.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
