"""Aligned allocation for the state buffers fusedoptim owns."""

import numpy as np

CACHE_LINE = 64


def aligned_full(shape, dtype, fill=0.0, align=CACHE_LINE):
    """An array of ``shape`` filled with ``fill`` whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start : start + nbytes].view(dtype).reshape(shape)
    out.fill(fill)
    return out
