"""Meta-models: what is meta-learned and what adapts per task."""

from metax.meta_models.anil import anil
from metax.meta_models.base import BATCH_NORM_MODES, MetaModel, make_energies
from metax.meta_models.cavia import cavia
from metax.meta_models.complex_synapse import complex_synapse
from metax.meta_models.gain_mod import gain_mod
from metax.meta_models.learned_init import learned_init
from metax.meta_models.learned_rates import learned_rates

__all__ = [
    "BATCH_NORM_MODES",
    "MetaModel",
    "anil",
    "cavia",
    "complex_synapse",
    "gain_mod",
    "learned_init",
    "learned_rates",
    "make_energies",
]
