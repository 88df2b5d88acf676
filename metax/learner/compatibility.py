"""Which learner works with which meta-model, found by building each registered pair (the
registries: `metax.learner.registry`, `metax.meta_models.registry`). One source of truth for
the tables in README.md and the docs: ``python -m metax.learner.compatibility`` prints it."""

from metax.learner.optimizers import learned_sgd
from metax.learner.registry import LEARNERS, LearnerEntry
from metax.meta_models.base import MetaModel
from metax.meta_models.registry import META_MODELS

YES, REGULARIZED, NO = "yes", "with `reg_strength`", "no"


def build_example(entry: LearnerEntry, meta_model: MetaModel):
    """``entry``'s example learner on ``meta_model`` (with `learned_sgd` as inner optimizer
    where the meta-model learns inner rates). Raises the learner's ValueError if it refuses
    the meta-model."""
    overrides = {"inner_optimizer": learned_sgd()} if meta_model.optimizer_keys else {}
    return entry.example(meta_model, **overrides)


def _builds(entry: LearnerEntry, meta_model: MetaModel | None) -> bool:
    if meta_model is None:
        return False
    try:
        build_example(entry, meta_model)
    except ValueError:
        return False
    return True


def compatibility() -> dict[str, dict[str, str]]:
    """``{learner label: {meta-model label: "yes" | "with `reg_strength`" | "no"}}`` for every
    registered learner that takes a meta-model: whether it can be built with the meta-model's
    example as is, only with its ``reg_strength`` option, or not. Rows and columns in
    alphabetical order of the factories' names."""
    table = {}
    for learner_name in sorted(LEARNERS):
        entry = LEARNERS[learner_name]
        if entry.takes != "meta_model":
            continue
        row = {}
        for meta_model_name in sorted(META_MODELS):
            meta_model = META_MODELS[meta_model_name]
            regularized = meta_model.regularized_example
            if _builds(entry, meta_model.example()):
                row[meta_model.label] = YES
            elif regularized is not None and _builds(entry, regularized()):
                row[meta_model.label] = REGULARIZED
            else:
                row[meta_model.label] = NO
        table[entry.label] = row
    return table


def markdown_table() -> str:
    """`compatibility` as a markdown table, and the learners that take a model instead."""
    table = compatibility()
    columns = list(next(iter(table.values())))
    lines = [
        "| learner \\ meta-model | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    lines += [f"| {learner} | " + " | ".join(row.values()) + " |" for learner, row in table.items()]
    others = [e.label for name, e in sorted(LEARNERS.items()) if e.takes == "model"]
    if others:
        lines += ["", f"No meta-model, an embedding model: {', '.join(others)}."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
