"""Deprecated: ``metax.module`` was renamed `metax.meta_models` (matching ``configs/meta_models/``).

Kept for one release so that ``from metax import module`` keeps working; gin names are only
``metax.meta_models.*`` (the launcher says so when an old name is used).
"""

import warnings

from metax.meta_models import *  # noqa: F403
from metax.meta_models import __all__  # noqa: F401

warnings.warn(
    "metax.module was renamed metax.meta_models; import that instead.",
    DeprecationWarning,
    stacklevel=2,
)
