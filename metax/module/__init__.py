"""Meta-models: what is meta-learned and what adapts per task."""

from metax.module.base import MetaModel
from metax.module.learned_init import learned_init

__all__ = ["MetaModel", "learned_init"]
