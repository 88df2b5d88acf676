"""Meta-models: what is meta-learned and what adapts per task."""

from metax.module.anil import anil
from metax.module.base import BATCH_NORM_MODES, MetaModel, make_energies
from metax.module.cavia import cavia
from metax.module.complex_synapse import complex_synapse
from metax.module.gain_mod import gain_mod
from metax.module.learned_init import learned_init
from metax.module.learned_rates import learned_rates

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
