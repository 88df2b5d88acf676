"""Handing the XLA compiler's freed heap back to the operating system.

Compiling a meta-step allocates hundreds of MB on the host that XLA frees once the executable
exists, but glibc keeps freed pages in its arenas, so the process would hold them for the
whole run. ``malloc_trim(0)`` returns them (benchmarks/memory_stages.py measures the RSS before
and after).
"""

import ctypes
import ctypes.util

from absl import logging


def _load_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # Not glibc (macOS, musl): nothing to trim.
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> bool:
    """Returns the heap pages that the process has freed to the operating system (glibc's
    ``malloc_trim(0)``, all arenas). True if glibc released any; False if it had none to
    release or the C library is not glibc. Takes milliseconds; call it after compiling."""
    if _MALLOC_TRIM is None:
        return False
    released = bool(_MALLOC_TRIM(0))
    logging.debug("malloc_trim released memory: %s", released)
    return released
