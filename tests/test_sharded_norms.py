"""A two-pass rule's per-tensor sums, changed between the passes (``reduce``): how a tensor sharded
across processes takes its whole norm (LAMB's trust ratio under FSDP2 and tensor parallelism)."""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import assert_bitwise_equal, backends
from fusedoptim import _backends
from fusedoptim._rules import RULES

LAMB = RULES["lamb"]


def problem(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for _ in range(2)] + [np.abs(rng.standard_normal(n)).astype(dtype)]


def step_shards(backend, isa, whole, cuts, plan):
    """Steps ``whole`` (param, grad, exp_avg_sq start) cut into shards, one call with one tensor per
    shard, whose sums are replaced by their totals in shard order, as ranks adding all-gathered sums do."""
    if isa is not None:
        fo.set_isa(isa)
    param, grad, exp_avg_sq = (x.copy() for x in whole)
    pieces = [np.split(x, cuts) for x in (param, grad, np.zeros_like(param), exp_avg_sq)]
    seen = []

    def totals(sums):
        seen.append(sums.copy())
        total = sums[0].copy()
        for row in sums[1:]:
            total = total + row
        sums[...] = total

    _backends.step(backend, LAMB, plan, pieces[0], pieces[1], (pieces[2], pieces[3]), reduce=totals)
    return param, seen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hyper", [dict(lr=0.1), dict(lr=0.1, weight_decay=0.05, maximize=True)], ids=str)
def test_shards_with_totalled_sums_step_as_the_whole_tensor(dtype, hyper, isa):
    """Shards of a power of two of whole blocks sum to the very bits of the whole tensor's pairwise
    combination of blocks, so stepping them with totalled sums gives the whole tensor's step, bitwise."""
    whole = problem(4 * 1024, dtype)
    plan = LAMB.plan(3, **hyper)
    expected = whole[0].copy()
    fo.lamb_(expected, whole[1], np.zeros_like(expected), whole[2].copy(), step=3, backend="numpy", **hyper)
    for label, backend, level in [("numpy", "numpy", None)] + backends():
        param, seen = step_shards(backend, level, whole, [2048], plan)
        assert len(seen) == 1 and seen[0].shape == (2, len(LAMB.sums)), label
        assert_bitwise_equal(param, expected, f"{label}: two shards of 2048")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_backend_steps_any_shards_alike(dtype, isa):
    """Uneven shards (an empty one too): the reduction changes each tensor's trust ratio, and every
    backend and ISA level gives the same bits and sees the same sums."""
    whole = problem(5000, dtype, seed=1)
    plan = LAMB.plan(2, lr=0.05, weight_decay=0.01)
    expected, expected_seen = step_shards("numpy", None, whole, [37, 37, 3000], plan)
    alone = whole[0].copy()
    fo.lamb_(np.split(alone, [37, 37, 3000]), np.split(whole[1], [37, 37, 3000]),
             np.split(np.zeros_like(alone), [37, 37, 3000]), np.split(whole[2].copy(), [37, 37, 3000]),
             step=2, lr=0.05, weight_decay=0.01, backend="numpy")
    assert not np.array_equal(expected, alone)  # the totals changed the step: the guard
    for label, backend, level in backends():
        param, seen = step_shards(backend, level, whole, [37, 37, 3000], plan)
        assert_bitwise_equal(param, expected, label)
        assert_bitwise_equal(seen[0], expected_seen[0], f"{label}: sums")


@pytest.mark.skipif(fo._backends._kernels is None, reason="the C++ extension is not built")
def test_reduce_is_for_two_pass_rules_only():
    rule = RULES["adam"]
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="two-pass"):
        fo._backends._kernels.adam([p], [p.copy()], ([p.copy()], [p.copy()], None), 3, rule.plan(1).scalars, 0,
                                   reduce_sums=lambda sums: None)
