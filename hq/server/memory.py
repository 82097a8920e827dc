"""Giving memory back to the system after a burst: a big submission's frames and copies.

glibc's malloc keeps freed memory in its arenas; after a submission of a million jobs that is
hundreds of MB hq-server would hold for nothing. ``malloc_trim`` returns what is free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:   # not glibc (musl, another system): nothing to trim
        return None


def release_free_memory() -> None:
    """Return the memory malloc holds free to the system, where the C library can."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)  # type: ignore[operator]
