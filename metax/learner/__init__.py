"""Learners (outer loops): factories returning a `Learner` of pure functions."""

from metax.learner.base import Learner, MetaState
from metax.learner.eqprop import eqprop
from metax.learner.evolution import evolution
from metax.learner.implicit import (
    InverseHvp,
    conjugate_gradient,
    implicit,
    recurrent_backprop,
    t1t2,
)
from metax.learner.inner import Adaptation, InnerLoop, adapt_task, run_inner_loop
from metax.learner.maml import maml
from metax.learner.optimizers import learned_sgd, per_key_optimizer
from metax.learner.prototypical import prototypical
from metax.learner.reptile import buffered_reptile, reptile

__all__ = [
    "Adaptation",
    "InnerLoop",
    "InverseHvp",
    "Learner",
    "MetaState",
    "adapt_task",
    "buffered_reptile",
    "conjugate_gradient",
    "eqprop",
    "evolution",
    "implicit",
    "learned_sgd",
    "maml",
    "per_key_optimizer",
    "prototypical",
    "recurrent_backprop",
    "reptile",
    "run_inner_loop",
    "t1t2",
]
