"""Aligned allocation for the state buffers fusedoptim owns."""

import itertools

import numpy as np

CACHE_LINE = 64
HUGE_PAGE = 2 << 20
# Consecutive large buffers start this much further into their huge page, cycling through
# 4 KiB: equal-size buffers all at one offset mod 4 KiB would make a streaming kernel's loads
# and stores alias (back-to-back NumPy arrays slowed one 1.7x). On this project's test
# machine staggered, unstaggered and back-to-back buffers streamed within noise of each
# other (Sapphire Rapids, 16 MiB arrays, 4 reads + 3 writes); the stagger costs nothing.
_STAGGER = 256
_staggers = itertools.count()


def aligned_full(shape, dtype, fill=0.0):
    """An array of ``shape`` filled with ``fill``, starting on a cache line.

    Buffers of 2 MiB or more start 2 MiB-aligned (whole huge pages) plus a stagger of a
    multiple of 256 B that differs between consecutive buffers. The unused head of the
    allocation is never touched, so it takes no memory.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= HUGE_PAGE:
        align, offset = HUGE_PAGE, next(_staggers) % (4096 // _STAGGER) * _STAGGER
    else:
        align, offset = CACHE_LINE, 0
    raw = np.empty(nbytes + align + offset, dtype=np.uint8)
    start = -raw.ctypes.data % align + offset
    out = raw[start : start + nbytes].view(dtype).reshape(shape)
    out.fill(fill)
    return out
