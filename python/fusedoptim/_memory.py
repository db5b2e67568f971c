"""Where fusedoptim puts the buffers it owns, and the allocators it offers (README, "Memory placement")."""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

CACHE_LINE = 64
HUGE_PAGE = 2 << 20
# Consecutive large buffers start this much further into their huge page, cycling through
# 4 KiB, so that a step's streams fall in different L1 sets. Equal-size arrays allocated one
# after another (np.zeros_like of each param) sit at one offset mod 4 KiB, a power of two plus
# 4 KiB apart: on AMD Zen their lines then share L1 sets and often the linear-address utag of
# the L1 way predictor, and every access misses to L2 (Zen 3, 16M-element fp32 Adam: 1.3-1.5x
# the staggered time; streams exactly 128 MiB apart: 1.9x). Buffers in different sets cannot
# collide; on Sapphire Rapids the stagger measured neither better nor worse.
_STAGGER = 256
_staggers = itertools.count()


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` starting on a cache line.

    Buffers of 2 MiB or more start 2 MiB-aligned (whole huge pages: NumPy asks the kernel for
    them) plus a stagger of a multiple of 256 B that differs between consecutive buffers. The
    unused head of the allocation is never touched, so it takes no memory.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= HUGE_PAGE:
        align, offset = HUGE_PAGE, next(_staggers) % (4096 // _STAGGER) * _STAGGER
    else:
        align, offset = CACHE_LINE, 0
    raw = np.empty(nbytes + align + offset, dtype=np.uint8)
    start = -raw.ctypes.data % align + offset
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned_full(shape, dtype, fill=0.0):
    """``aligned_empty`` filled with ``fill``."""
    out = aligned_empty(shape, dtype)
    out.fill(fill)
    return out


def packed_empty(nbytes, continues):
    """Uninitialised byte arrays of ``nbytes[k]`` bytes, views of one buffer (``aligned_empty``),
    in order: view k starts where view k-1 ends where ``continues[k]`` (as ``continuing`` tells of
    the params they are state of: a step over such params and states then runs as over one array,
    cpp/step.cpp), else on the next cache line. One buffer rather than one per view: a step over
    many small tensors streams through it as through one array, in few pages."""
    offsets, end = [], 0
    for size, joined in zip(nbytes, continues):
        if not joined:
            end = -(-end // CACHE_LINE) * CACHE_LINE
        offsets.append(end)
        end += size
    buffer = aligned_empty((end,), np.uint8)
    return [buffer[o : o + n] for o, n in zip(offsets, nbytes)]


def continuing(spans):
    """For memory spans (address, nbytes, dtype) in order: whether each starts where the one before
    ends and holds the same dtype (the first: False)."""
    return [k > 0 and spans[k - 1][0] + spans[k - 1][1] == address and spans[k - 1][2] == dtype
            for k, (address, _, dtype) in enumerate(spans)]


def _shape_and_dtype(a, dtype):
    a = a if isinstance(a, np.ndarray) else np.asarray(a)
    return a.shape, a.dtype if dtype is None else np.dtype(dtype)


def empty_like(a: ArrayLike, dtype: DTypeLike | None = None) -> np.ndarray:
    """An uninitialised array with the shape and dtype of ``a``, placed for fast steps.

    Like ``np.empty_like`` (C order), but the buffer starts on a cache line and, from 2 MiB
    up, in whole huge pages at an offset that differs from the previous buffer's: arrays made
    this way for a step's params, grads and states never slow each other down.
    """
    return aligned_empty(*_shape_and_dtype(a, dtype))


def zeros_like(a: ArrayLike, dtype: DTypeLike | None = None) -> np.ndarray:
    """``empty_like`` filled with zeros (``np.zeros_like``, placed for fast steps)."""
    return aligned_full(*_shape_and_dtype(a, dtype))
