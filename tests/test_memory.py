"""State buffers: aligned, filled, any shape."""

import numpy as np
import pytest

from fusedoptim._memory import CACHE_LINE, HUGE_PAGE, aligned_full


@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 0), (7, 5), (1000,), (HUGE_PAGE // 4 + 5,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aligned_full(shape, dtype):
    a = aligned_full(shape, dtype, 0.5)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert np.all(a == 0.5)
    assert a.ctypes.data % CACHE_LINE == 0 or a.size == 0  # (an empty array's address is NumPy's choice)


def test_large_buffers_start_in_whole_huge_pages_at_different_offsets_mod_4k():
    n = HUGE_PAGE // 4
    buffers = [aligned_full(n, np.float32) for _ in range(4)]
    offsets = [b.ctypes.data % HUGE_PAGE for b in buffers]
    assert all(o < 4096 for o in offsets)  # the buffer starts in the first 4 KiB of a huge page
    assert len({o % 4096 for o in offsets}) == 4  # and no two alias mod 4 KiB


def test_buffers_do_not_overlap():
    a, b = aligned_full(1000, np.float32, 1.0), aligned_full(1000, np.float32, 2.0)
    assert not np.shares_memory(a, b)
