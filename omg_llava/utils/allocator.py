"""Giving freed memory back to the system.

glibc serves allocations under its mmap threshold (up to 32 MB, raised as large blocks are freed)
from the heap, and keeps the pages of freed blocks for reuse. A load that allocates and frees many
work buffers between long-lived weights (a LoRA merge, int8 quantization, an image encoding) leaves
gigabytes of such free pages resident; ``malloc_trim`` returns them.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def release_free_memory() -> bool:
    """Return the free pages glibc's allocator holds to the system; ``False`` where there is no
    glibc."""
    name = ctypes.util.find_library('c')
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
