"""The registry of learners: each registers once, with a small example, and the compatibility
table (`metax.learner.compatibility`), the docs' tables and the shared smoke test of every
learner (`metax.testing`) are derived from it.

    @register_learner(example=lambda meta_model, **kw: my_learner(meta_model, steps=2, **kw))
    def my_learner(meta_model, ...) -> Learner: ...

registers ``my_learner`` with gin too (as ``metax.learner.my_learner`` for metax's own, under
its module's name otherwise). A learner is then one module plus its config and test.
"""

import dataclasses
from collections.abc import Callable

import gin

from metax.learner.base import Learner

TASKS = ("regression", "classification")


@dataclasses.dataclass(frozen=True)
class LearnerEntry:
    """A registered learner.

    Attributes:
      name: the factory's name.
      factory: the factory, ``factory(meta_model_or_model, ...) -> Learner``.
      label: its row in the compatibility table.
      example: ``example(meta_model, **overrides) -> Learner``: the factory with small
        settings (few inner steps, a small population, ...); ``overrides`` are the factory's
        keyword arguments (the table passes ``inner_optimizer`` for learned inner rates).
      takes: ``"meta_model"`` (a `metax.meta_models.MetaModel`, the compatibility table's
        columns) or ``"model"`` (an embedding `metax.nn.Model`, e.g. prototypical networks).
      tasks: the tasks its examples run on: ``"regression"`` (1-D sinusoids) or
        ``"classification"`` (few-shot episodes).
    """

    name: str
    factory: Callable[..., Learner]
    label: str
    example: Callable[..., Learner]
    takes: str = "meta_model"
    tasks: str = "regression"


LEARNERS: dict[str, LearnerEntry] = {}


def register_learner(
    *,
    example: Callable[..., Learner],
    label: str | None = None,
    takes: str = "meta_model",
    tasks: str = "regression",
):
    """Registers a learner factory (a decorator): with gin, and in `LEARNERS` with its
    example (see `LearnerEntry`; ``label`` defaults to the factory's name)."""
    if takes not in ("meta_model", "model") or tasks not in TASKS:
        raise ValueError(
            f"register_learner takes 'meta_model' or 'model' and tasks one of {TASKS}, got "
            f"{takes!r} and {tasks!r}."
        )

    def register(factory):
        name = factory.__name__
        module = factory.__module__
        gin_module = "metax.learner" if module.startswith("metax.learner.") else module
        gin.register(factory, module=gin_module)
        LEARNERS[name] = LearnerEntry(name, factory, label or f"`{name}`", example, takes, tasks)
        return factory

    return register
