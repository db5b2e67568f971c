"""The numerical contract: cpp at every ISA level == numba == the NumPy reference, bit for bit, for every
storage combination (tests/test_storage.py checks the conversions themselves, exhaustively)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (BF16, CASES, F32, PLAIN_STORAGES, STORAGES, Storage, assert_bitwise_equal,
                      assert_matches_reference, make_problem, run)
from fusedoptim._rules import RULES


ODD_SIZES = [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1023, 1025]
sizes = st.one_of(st.integers(0, 70), st.integers(0, 5000), st.sampled_from(ODD_SIZES))
# Byte offsets from a 64-byte boundary: aligned, element-misaligned, and odd (unaligned for the dtype).
offsets = st.lists(st.sampled_from([0, 0, 4, 8, 12, 24, 32, 40, 56, 1, 2, 3, 5]), min_size=64, max_size=64)


@pytest.mark.parametrize("case", CASES, ids=repr)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_backends_agree_bitwise(case, isa, data):
    hyper = data.draw(st.sampled_from(case.grid), label="hyper")
    dtype = data.draw(st.sampled_from(STORAGES), label="storage")  # the examples are split across them
    tensor_sizes = data.draw(st.lists(sizes, min_size=1, max_size=3), label="sizes")
    steps = data.draw(st.integers(1, 4), label="steps")
    first_step = data.draw(st.sampled_from([1, 1, 2, 10, 1000]), label="first_step")
    problem = make_problem(case, hyper, dtype, tensor_sizes, steps, data.draw(st.integers(0, 2**32 - 1)),
                           specials=data.draw(st.booleans(), label="nan/inf"))
    assert_matches_reference(case, hyper, problem, first_step, data.draw(offsets, label="offsets"))


@pytest.mark.parametrize("dtype", PLAIN_STORAGES + [Storage(BF16, BF16, (F32,))], ids=repr)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_every_flag_combination_agrees_bitwise(case, dtype, isa):
    """The whole grid, deterministically: sizes straddling every vector width, misaligned, many steps."""
    for k, hyper in enumerate(case.grid):
        problem = make_problem(case, hyper, dtype, [1037, 5, 64], steps=6, seed=k, specials=k % 2 == 1)
        assert_matches_reference(case, hyper, problem, 1, [4 * (k % 3) + j % 5 * 8 for j in range(64)])


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_list_call_equals_per_tensor_calls(case):
    """A multi-tensor call is exactly the single-tensor calls, one after another."""
    hyper = case.grid[-1]
    problem = make_problem(case, hyper, np.float32, [300, 0, 17, 4096], steps=3, seed=7, specials=False)
    together = run(case, hyper, problem, 1, [0] * 64, None, None)
    for i in range(4):
        single = ([problem[0][i]], {a: [s[i]] for a, s in problem[1].items()}, [[g[i]] for g in problem[2]])
        alone = run(case, hyper, single, 1, [0] * 64, None, None)
        assert_bitwise_equal(alone[0][0], together[0][i], f"{case.name} params[{i}]")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_step_changes_params(case):
    """Guards the comparisons above against a kernel that does nothing on every backend: a first
    step from the states a fresh optimizer starts with moves every param. (From random states it
    need not: Rprop does not step where the gradient's sign flipped.)"""
    hyper = case.grid[0]
    params, states, grads = make_problem(case, hyper, np.float32, [100], steps=1, seed=3, specials=False)
    rule = RULES[case.name]

    def start(arg):
        initial = rule.initial.get(case.states[arg][0])
        return hyper.get(initial, rule.hyper[initial].default) if initial else 0.0

    fresh = {arg: [np.full_like(a, start(arg)) for a in arrays] for arg, arrays in states.items()}
    stepped, _ = run(case, hyper, (params, fresh, grads), 1, [0] * 64, None, None)
    assert np.all(stepped[0] != params[0])
