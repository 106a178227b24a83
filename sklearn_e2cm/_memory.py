"""Keep the resident memory of long streaming passes flat.

Streaming a network over many batches allocates and frees large activation
buffers between small long-lived arrays; with glibc's allocator the freed
space at the top of the heap is then often not returned to the system and the
resident size of a fit grows by tens of MB per batch. ``trim_heap`` asks
glibc to give free heap pages back (``malloc_trim``); elsewhere it does
nothing.
"""

import ctypes
import ctypes.util
import sys

__all__ = ["trim_heap"]

_TRIM = None


def _load():
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _TRIM = libc.malloc_trim
                _TRIM.argtypes = [ctypes.c_size_t]
                _TRIM.restype = ctypes.c_int
            except (OSError, AttributeError):
                _TRIM = False
    return _TRIM


def trim_heap():
    """Return free heap memory to the operating system (glibc only; else a no-op)."""
    trim = _load()
    if trim:
        trim(0)
