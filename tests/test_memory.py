"""State buffers: aligned, filled, any shape."""

import numpy as np
import pytest

import fusedoptim as fo
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


@pytest.mark.parametrize("make", [fo.zeros_like, fo.empty_like])
@pytest.mark.parametrize("like", [np.ones((3, 5), np.float64), np.ones(HUGE_PAGE // 4 + 3, np.float32)[1:],
                                  np.ones((4, 6), np.float32).T, [[1.0, 2.0]], np.float32(2)])
def test_public_allocators_place_like_the_state_allocator(make, like):
    a, like = make(like), np.asarray(like)
    assert a.shape == like.shape and a.dtype == like.dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % CACHE_LINE == 0
    if make is fo.zeros_like:
        assert np.all(a == 0)
    assert make(like, dtype=np.float32).dtype == np.float32


def test_consecutive_large_arrays_from_zeros_like_land_in_different_l1_sets():
    """What NumPy's consecutive equal-size arrays do not do (README, "Memory placement")."""
    p = np.ones(HUGE_PAGE // 4, np.float32)
    offsets = [fo.zeros_like(p).ctypes.data % 4096 for _ in range(4)]
    assert len(set(offsets)) == 4


def test_torch_state_is_placed_and_keeps_the_params_layout():
    torch = pytest.importorskip("torch")
    import fusedoptim.torch as ft

    big = torch.nn.Parameter(torch.ones(HUGE_PAGE // 4 + 5))
    conv = torch.nn.Parameter(torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last))
    for p in (big, conv):
        p.grad = torch.full_like(p, 0.5)
    opt = ft.Adam([big, conv])
    opt.step()
    states = [opt.state[big]["exp_avg"], opt.state[big]["exp_avg_sq"]]
    assert all(s.data_ptr() % CACHE_LINE == 0 for s in states)
    assert len({s.data_ptr() % 4096 for s in states}) == 2  # torch's allocator: one offset for both
    for name in ("exp_avg", "exp_avg_sq"):
        s = opt.state[conv][name]
        assert s.stride() == conv.stride() and s.dtype == conv.dtype and s.shape == conv.shape
    reference = torch.optim.Adam([torch.nn.Parameter(conv.detach().clone())])
    reference.param_groups[0]["params"][0].grad = conv.grad.clone()
    reference.step()
    assert torch.equal(opt.state[conv]["exp_avg"], reference.state[reference.param_groups[0]["params"][0]]["exp_avg"])
