"""The extension's ``Plan`` and ``arrays_of`` (fusedoptim.torch's planned step and grad reader),
driven with NumPy stand-ins for a framework's tensors, so that the sanitizer job (which has no
torch) runs their C++: a step that the plan takes is the kernel's step, bit for bit; anything it
must not take changes nothing and says why."""

import numpy as np
import pytest

from fusedoptim import _native
from fusedoptim._memory import aligned_full

kernels = _native.module()
pytestmark = pytest.mark.skipif(kernels is None, reason="the C++ extension is not built")
ADAM = [rule["name"] for rule in kernels.RULES].index("adam") if kernels else 0
SCALARS = (0.9, 0.1, 0.999, 0.001, 1e-3, 1.0, 1e-8, 0.0, 1.0)  # AdamScalars, as planned
LATER = (0.9, 0.1, 0.999, 0.001, 1e-3 / (1 - 0.9**3), 1 / (1 - 0.999**3) ** 0.5, 1e-8, 0.0, 1.0)  # a third step's


class Tensor(np.ndarray):
    """What the plan asks of a framework's tensor: a DLPack export, ``is_neg``, ``data_ptr``, ``layout``."""

    neg = False
    moved = 0  # as a tensor's storage replaced in place (torch's `p.data = x`) moves its data_ptr()
    layout = "strided"

    def is_neg(self):
        return self.neg

    def data_ptr(self):
        return self.ctypes.data + self.moved


def export(tensor):
    return tensor.__dlpack__()


class Param:
    """A param object: its array (a Tensor), and ``.grad``."""

    def __init__(self, n, seed):
        self.data = np.random.default_rng(seed).standard_normal(n).astype(np.float32).view(Tensor)
        self.grad = (np.random.default_rng(seed + 1).standard_normal(n).astype(np.float32) * 1e-2).view(Tensor)


def setup(sizes, counts=None):
    params = [Param(n, k) for k, n in enumerate(sizes)]
    m = [aligned_full(n, np.float32, 0.1) for n in sizes]
    v = [aligned_full(n, np.float32, 0.2) for n in sizes]
    arrays = [p.data.view(np.ndarray) for p in params]
    plan = kernels.Plan(ADAM, [(params, arrays, (m, v, None), counts)],
                        [(p.data, p.data.ctypes.data) for p in params], Tensor, export, "strided")
    return params, arrays, m, v, plan


def copies(arrays):
    return [a.copy() for a in arrays]


def take(plan, params, scalars=SCALARS, flags=0):
    """A step of the plan's one group, without counts."""
    return plan.step([params], [[(0, scalars, flags)]])


@pytest.mark.parametrize("sizes", [[5, 0, 33, 4096], [1 << 15, 3, 1 << 14]], ids=["small", "GIL released"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_planned_step_is_the_kernels_step(sizes, threads):
    params, arrays, m, v, plan = setup(sizes)
    expected = copies(arrays), [p.grad.view(np.ndarray).copy() for p in params], copies(m), copies(v)
    previous = kernels.num_threads()
    kernels.set_num_threads(threads)
    try:
        assert kernels.adam(expected[0], expected[1], (expected[2], expected[3], None), 3, SCALARS, 0)
        assert take(plan, params) == plan.STEPPED
    finally:
        kernels.set_num_threads(previous)
    for ours, theirs in zip([arrays, m, v], [expected[0], expected[2], expected[3]]):
        for a, b in zip(ours, theirs):
            assert a.tobytes() == b.tobytes()


def unchanged(params, arrays, m, v):
    before = [copies(arrays), copies(m), copies(v)]
    return lambda: all(a.tobytes() == b.tobytes() for now, then in zip([arrays, m, v], before)
                       for a, b in zip(now, then))


@pytest.mark.parametrize("change", [
    lambda ps: setattr(ps[1], "grad", None),
    lambda ps: setattr(ps[1], "grad", ps[1].grad.view(np.ndarray)),  # not the grad type
    lambda ps: setattr(ps[1], "grad", ps[1].grad[:-1]),
    lambda ps: setattr(ps[1], "grad", np.repeat(ps[1].grad, 2)[::2].view(Tensor)),  # not contiguous
    lambda ps: setattr(ps[1], "grad", ps[1].grad.astype(np.int32).view(Tensor)),
    lambda ps: setattr(ps[1], "grad", ps[1].grad.astype(np.float64).view(Tensor)),  # not a native layout
    lambda ps: setattr(ps[1].grad, "neg", True),
    lambda ps: setattr(ps[1], "grad", ps[0].data),  # another param's memory
], ids=["none", "other type", "shorter", "strided", "int", "float64", "negative", "overlaps a param"])
def test_grads_it_cannot_take_decline_the_step(change):
    params, arrays, m, v, plan = setup([7, 9, 11])
    same = unchanged(params, arrays, m, v)
    change(params)
    assert take(plan, params) == plan.DECLINED
    assert same()


def test_a_plan_that_no_longer_holds_is_stale():
    params, arrays, m, v, plan = setup([7, 9, 11])
    same = unchanged(params, arrays, m, v)
    assert take(plan, params[::-1]) == plan.STALE
    assert take(plan, params[:2]) == plan.STALE
    params[1].data.moved = 64
    assert take(plan, params) == plan.STALE
    assert same()


def test_scalars_a_float32_step_cannot_hold_decline_it():
    params, arrays, m, v, plan = setup([7])
    same = unchanged(params, arrays, m, v)
    assert take(plan, params, (1e300,) + SCALARS[1:]) == plan.DECLINED
    assert same()
    with pytest.raises(ValueError):
        take(plan, params, SCALARS[1:])
    with pytest.raises(ValueError):
        take(plan, params, flags=1 << 10)
    with pytest.raises(ValueError):  # a group without counts has one part
        plan.step([params], [[(0, SCALARS, 0), (1, LATER, 0)]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_params_of_different_counts_step_with_their_parts_plans(dtype):
    """Each param steps with the plan of its count, as the kernel steps it alone; every count advances."""
    counts = np.array([2, 0, 2, 0], dtype)
    params, arrays, m, v, plan = setup([7, 9, 4096, 33], counts=counts)
    expected = copies(arrays), [p.grad.view(np.ndarray).copy() for p in params], copies(m), copies(v)
    for k, scalars in enumerate([LATER, SCALARS, LATER, SCALARS]):
        assert kernels.adam(expected[0][k], expected[1][k], (expected[2][k], expected[3][k], None), 3, scalars, 0)
    assert plan.step([params], [[(2.0, LATER, 0), (0.0, SCALARS, 0)]]) == plan.STEPPED
    for ours, theirs in zip([arrays, m, v], [expected[0], expected[2], expected[3]]):
        for a, b in zip(ours, theirs):
            assert a.tobytes() == b.tobytes()
    assert counts.tolist() == [3, 1, 3, 1] and counts.dtype == dtype


def test_a_count_without_a_part_declines_the_step():
    counts = np.array([2, 1, 2], np.float32)
    params, arrays, m, v, plan = setup([7, 9, 11], counts=counts)
    same = unchanged(params, arrays, m, v)
    assert plan.step([params], [[(2.0, LATER, 0)]]) == plan.DECLINED
    assert same() and counts.tolist() == [2, 1, 2]
    with pytest.raises(ValueError):
        kernels.Plan(ADAM, [(params, arrays, (m, v, None), np.zeros(2, np.float32))], [], Tensor, export, "strided")


def test_a_plan_of_shared_memory_is_refused():
    params = [Param(8, 0), Param(8, 1)]
    shared = aligned_full(8, np.float32)
    with pytest.raises(ValueError):
        kernels.Plan(ADAM, [(params, [p.data.view(np.ndarray) for p in params], ([shared, shared], [
            aligned_full(8, np.float32), aligned_full(8, np.float32)], None), None)], [], Tensor, export, "strided")


def test_arrays_of_views_what_it_can_read():
    readable = [np.arange(6, dtype=np.float32).reshape(2, 3).view(Tensor),
                np.arange(6, dtype=np.float64)[::2].view(Tensor), np.zeros(0, np.float16).view(Tensor)]
    negative = np.ones(3, np.float32).view(Tensor)
    negative.neg = True
    arrays = kernels.arrays_of(readable + [np.arange(3).view(Tensor), negative], export)
    for tensor, array in zip(readable, arrays):
        assert array.base is not None and array.ctypes.data == tensor.ctypes.data and not array.flags.writeable
        assert (array.dtype, array.shape, array.strides) == (tensor.dtype, tensor.shape, tensor.strides)
    assert arrays[3:] == [None, None]
