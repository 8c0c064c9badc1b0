"""Process memory housekeeping for the agent (resident memory is what a small device runs out of).

Loading a data source reads the whole dataset (all of MNIST: about 400 MB at its peak) before
``--partition`` keeps this device's share; Python and numpy free it, but glibc's allocator keeps
freed pages of its main heap resident unless asked to give them back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("feddst.agent")


def release_free_memory() -> bool:
    """Collect garbage and return the allocator's free pages to the OS (glibc ``malloc_trim(0)``, every
    arena). True when trimmed; False where the C library has no ``malloc_trim`` (musl, macOS): a no-op."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        log.debug("malloc_trim is not available in this C library; freed memory stays with the allocator")
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
