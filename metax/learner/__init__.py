"""Learners (outer loops): factories returning a `Learner` of pure functions."""

from metax.learner.base import Learner, MetaState
from metax.learner.inner import adapt
from metax.learner.maml import maml

__all__ = ["Learner", "MetaState", "adapt", "maml"]
