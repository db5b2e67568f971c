"""Storage dtypes: the conversions, exhaustively, through the real kernels of every backend and ISA
level, against ml_dtypes' and NumPy's own conversions; guards that show a wrong conversion is caught;
what the validator accepts and how it words the rest."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedoptim as fo
from fusedoptim import _storage

from conftest import (BF16, BIG, CASE_BY_NAME, CASES, F16, F32, F64, Storage, assert_bitwise_equal, backends,
                      make_problem, placed, run, supported_isas)

FORMATS = [BF16, F16]
_narrow = _storage.narrow  # the right one, which the guards replace


def all_patterns(fmt):
    """Every 16-bit pattern, as ``fmt``."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(fmt)


def dense_float32(fmt):
    """float32 patterns around every rounding point of ``fmt``: every pattern of the bits that
    survive (and the first one dropped), with the dropped bits 0, 1, just below half, half (a
    tie), just above, and all ones."""
    dropped = 16 if fmt == BF16 else 13  # float16 subnormals drop more: their rounding bits are enumerated too
    kept = np.arange(1 << (32 - dropped), dtype=np.uint64) << np.uint64(dropped)
    half = 1 << (dropped - 1)
    low = np.array([0, 1, half - 1, half, half + 1, (1 << dropped) - 1], dtype=np.uint64)
    return (kept[:, None] | low[None, :]).astype(np.uint32).ravel().view(np.float32)


def through_sgd(param, grad, lr, backend, isa):
    """``param + lr * grad`` (maximizing SGD), as ``backend`` computes and stores it."""
    if isa is not None:
        fo.set_isa(isa)
    with np.errstate(all="ignore"):
        fo.sgd_(param, grad, lr=lr, maximize=True, backend=backend)
    return param


def _flush(x, fmt):
    """x with the subnormals of ``fmt`` flushed to zero (sign kept)."""
    x = x.copy()
    tiny = np.abs(x.astype(np.float64)) < float(ml_dtypes.finfo(fmt).smallest_normal)
    x[tiny & (x != 0)] = np.copysign(0, x[tiny & (x != 0)].astype(np.float32)).astype(fmt)
    return x


def _truncate(values, fmt):
    """Rounding toward zero: what a conversion that drops bits without rounding computes."""
    values = np.asarray(values, np.float32)
    rounded = _narrow(values, fmt)
    away = np.abs(rounded.astype(np.float32)) > np.abs(values)
    rounded[away] = np.nextafter(rounded[away], np.zeros((), fmt))
    return rounded


# The conversions the tests below expect, and the wrong ones the guards substitute.
RIGHT = {"widen": lambda a, dtype: a.astype(dtype), "narrow": _narrow}
WRONG = {
    "narrowing truncates": {"narrow": _truncate},
    "narrowing flushes subnormals": {"narrow": lambda v, fmt: _flush(_narrow(v, fmt), fmt)},
    "widening flushes subnormals": {"widen": lambda a, dtype: _flush(a, a.dtype).astype(dtype)},
}


def check_conversions(fmt, backend, isa, widen=RIGHT["widen"], narrow=RIGHT["narrow"]):
    """Every ``fmt`` value widened and stored back, every ``fmt`` value times a few multipliers
    rounded to ``fmt``, and a dense set of float32 values rounded to ``fmt``, as the kernels
    compute them (natively stored layouts and the catch-all), against ``widen`` and ``narrow``."""
    with np.errstate(all="ignore"):  # NaN and Inf are among the values
        _check_conversions(fmt, backend, isa, widen, narrow)


def _check_conversions(fmt, backend, isa, widen, narrow):
    patterns = all_patterns(fmt)
    zero = np.float32(0)
    # Widening alone, into a float32 param: 0 + x (so -0 comes out +0).
    got = through_sgd(np.zeros(patterns.size, F32), patterns, 1.0, backend, isa)
    assert_bitwise_equal(got, zero + widen(patterns, F32), f"{fmt} widened")
    # Widened and stored back unchanged (x + 0 * 0), in the native layout.
    got = through_sgd(patterns.copy(), np.zeros(patterns.size, fmt), 0.0, backend, isa)
    assert_bitwise_equal(got, narrow(widen(patterns, F32) + zero * zero, fmt), f"{fmt} stored back")
    # float32 products of every value, rounded, in the native layout: ties (x * (1 + 2^-8)), values
    # rounding to Inf, subnormal results.
    for m in [1 + 2.0**-8, 1 + 2.0**-11, 1.5 + 2.0**-12 + 2.0**-20, 3.0, 0.3, 2.0**-10]:
        got = through_sgd(np.zeros(patterns.size, fmt), patterns, m, backend, isa)
        assert_bitwise_equal(got, narrow(zero + np.float32(m) * widen(patterns, F32), fmt), f"{fmt} of {m} * x")
    # Dense float32 values rounded (the catch-all: float32 grads of fmt params).
    values = dense_float32(fmt)
    got = through_sgd(np.zeros(values.size, fmt), values, 1.0, backend, isa)
    assert_bitwise_equal(got, narrow(zero + values, fmt), f"float32 rounded to {fmt}")


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_conversions_match_ml_dtypes_and_numpy(fmt, isa):
    for label, backend, level in [("numpy", "numpy", None), *backends()]:
        check_conversions(fmt, backend, level)


# float32 bit patterns a bfloat16 store treats specially. A vector store may take a path by what its
# lanes hold (avx512bf16 converts with AVX512_BF16's instruction unless a lane is subnormal), so
# these are mixed into vectors of ordinary values, in every lane position.
def _bits(rng, n, exponent, low=None):
    sign = rng.integers(0, 2, n, dtype=np.uint32) << np.uint32(31)
    mantissa = rng.integers(0, 1 << 23, n, dtype=np.uint32) if low is None else low(rng, n)
    return sign | np.uint32(exponent(rng, n)) << np.uint32(23) | mantissa


LANES = {
    "normal": lambda rng, n: _bits(rng, n, lambda rng, n: rng.integers(1, 255, n, dtype=np.uint32)),
    "subnormal": lambda rng, n: _bits(rng, n, lambda rng, n: 0, lambda rng, n: rng.integers(1, 1 << 23, n, dtype=np.uint32)),
    "smallest normal": lambda rng, n: _bits(rng, n, lambda rng, n: 1, lambda rng, n: rng.integers(0, 1 << 16, n, dtype=np.uint32)),
    "tie": lambda rng, n: _bits(rng, n, lambda rng, n: rng.integers(0, 255, n, dtype=np.uint32),
                                lambda rng, n: rng.integers(0, 1 << 7, n, dtype=np.uint32) << np.uint32(16) | np.uint32(0x8000)),
    "to inf": lambda rng, n: _bits(rng, n, lambda rng, n: 254,
                                   lambda rng, n: np.uint32(0x7f8000) | rng.integers(0, 1 << 15, n, dtype=np.uint32)),
    "inf": lambda rng, n: _bits(rng, n, lambda rng, n: 255, lambda rng, n: 0),
    "nan": lambda rng, n: _bits(rng, n, lambda rng, n: 255,  # small payloads: the rounding add would carry them
                                lambda rng, n: rng.choice(np.array([1, 0x7fff, 0x8000, 0x400000, 0x7fffff], np.uint32), n)),
}


def check_bfloat16_stores(values, offset=0):
    """``values`` (float32) stored as bfloat16 from float32 grads (the catch-all), and their
    bfloat16 values times 1 + 2^-8 (a tie or past one) stored from bfloat16 grads (the native
    layout), by maximizing SGD from a zero param placed ``offset`` elements past 64 bytes: at
    every level and on 1 and 2 threads, against the reference's rounding."""
    zero, m = np.float32(0), np.float32(1 + 2.0**-8)
    previous = fo.get_num_threads()
    try:
        with np.errstate(all="ignore"):
            stored = _narrow(zero + values, BF16)
            computed = _narrow(zero + m * stored.astype(F32), BF16)
            for label, backend, level in backends():
                for count in (1, 2):
                    fo.set_num_threads(count)
                    got = through_sgd(placed(np.zeros(values.size, BF16), 2 * offset), values, 1.0, backend, level)
                    assert_bitwise_equal(got, stored, f"{label}, {count} threads: float32 stored as bfloat16")
                    got = through_sgd(placed(np.zeros(values.size, BF16), 2 * offset), stored, float(m), backend, level)
                    assert_bitwise_equal(got, computed, f"{label}, {count} threads: bfloat16 * {m} stored")
    finally:
        fo.set_num_threads(previous)


@pytest.mark.parametrize("kind", sorted(set(LANES) - {"normal"}))
def test_bfloat16_stores_round_a_special_value_in_each_lane_of_a_vector(kind, isa):
    """32 vectors of 32 normal values (two AVX-512 vectors, four AVX2 ones), the k-th with a
    value of ``kind`` in lane k."""
    rng = np.random.default_rng(7)
    values = LANES["normal"](rng, 32 * 32).reshape(32, 32)
    values[np.arange(32), np.arange(32)] = LANES[kind](rng, 32)
    check_bfloat16_stores(values.ravel().view(F32))


def test_guard_a_store_that_flushes_subnormals_is_caught_in_every_lane(isa, monkeypatch):
    """What AVX512_BF16's convert computes alone differs from the reference in each lane of the
    test above, so a store that used it bare would fail it: checked against every backend and level."""
    monkeypatch.setitem(globals(), "_narrow", lambda v, fmt: _flush(_storage.narrow(v, fmt), fmt))
    rng = np.random.default_rng(7)
    for lane in range(32):
        values = LANES["normal"](rng, 32)
        values[lane] = LANES["subnormal"](rng, 1)[0] | np.uint32(0x8000)  # rounds to a nonzero subnormal
        with pytest.raises(AssertionError, match="float32 stored as bfloat16"):
            check_bfloat16_stores(values.view(F32))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(LANES)), min_size=1, max_size=40), seed=st.integers(0, 2**32 - 1),
       size=st.one_of(st.integers(1, 300), st.just(BIG[0])), offset=st.integers(0, 15))
def test_bfloat16_stores_round_special_values_mixed_into_vectors(kinds, seed, size, offset, isa):
    """Normal values with about one special value per 16 (runs of the drawn kinds) at random
    positions, of any size (big enough for two threads, or not) and alignment."""
    rng = np.random.default_rng(seed)
    values = LANES["normal"](rng, size)
    specials = np.concatenate([LANES[kind](rng, 1 + k % 3) for k, kind in enumerate(kinds)])
    where = rng.permutation(size)[: max(1, size // 16)]
    values[where] = np.resize(specials, where.size)
    check_bfloat16_stores(values.view(F32), offset)


@pytest.mark.parametrize("wrong", WRONG, ids=str)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_guard_a_wrong_conversion_is_caught_at_every_level(fmt, wrong, isa):
    """The kernels' conversions differ from each wrong one on these inputs, so a kernel that
    made it would fail the test above: checked against each backend and ISA level."""
    for label, backend, level in backends():
        with pytest.raises(AssertionError):
            check_conversions(fmt, backend, level, **WRONG[wrong])


def test_float32_states_of_float64_params_round_to_nearest_even(isa):
    """float64 values rounded to float32 (the catch-all's float32 states of float64 params): ties,
    values past float32's max, float32 subnormals."""
    tiny, big = np.finfo(F32).smallest_subnormal, np.finfo(F32).max
    values = np.array([1 + 2.0**-24, 1 + 3 * 2.0**-24, -(1 + 2.0**-24 + 2.0**-40), float(tiny) / 2, 1.5 * float(tiny),
                       float(big) * (1 + 2.0**-25), -float(big) * (1 + 2.0**-24 - 2.0**-50), 1e-39, 0.1])
    for label, backend, level in [("numpy", "numpy", None), *backends()]:
        if level is not None:
            fo.set_isa(level)
        param, buf = np.zeros(values.size, F64), np.zeros(values.size, F32)
        # The first step copies the gradient into the buffer: the buffer is the gradient, rounded.
        fo.sgd_(param, values, buf, momentum=0.5, lr=0.0, step=1, backend=backend)
        with np.errstate(over="ignore"):
            assert_bitwise_equal(buf, values.astype(F32), label)


@pytest.mark.parametrize("wrong", ["narrowing truncates", "narrowing flushes subnormals"], ids=str)
def test_guard_the_contract_catches_a_wrong_rounding(wrong, isa, monkeypatch):
    """The contract test's inputs catch a reference that rounds stores wrongly, against each
    backend and ISA level: so they would catch a kernel that did."""
    case = CASE_BY_NAME["adam"]
    hyper = case.grid[0]
    monkeypatch.setattr(_storage, "narrow", WRONG[wrong]["narrow"])
    for label, backend, level in backends():
        for storage in (Storage(BF16, BF16, (BF16,)), Storage(F16, F16, (F16,))):
            # Values near the format's smallest normal number, so that results are subnormal too.
            problem = make_problem(case, hyper, storage, [2000], steps=1, seed=5, specials=True)
            if "subnormals" in wrong:
                scale = float(ml_dtypes.finfo(storage.param).smallest_normal)
                problem = tuple(_scaled(x, scale) for x in problem)
            with pytest.raises(AssertionError):
                _assert_one_backend(case, hyper, problem, backend, level)


def _scaled(x, scale):
    if isinstance(x, dict):
        return {k: _scaled(v, scale) for k, v in x.items()}
    if isinstance(x, list):
        return [_scaled(v, scale) for v in x]
    with np.errstate(all="ignore"):
        return (x.astype(np.float32) * np.float32(scale)).astype(x.dtype)


def _assert_one_backend(case, hyper, problem, backend, level):
    expected = run(case, hyper, problem, 1, [0] * 64, "numpy", None)
    got = run(case, hyper, problem, 1, [0] * 64, backend, level)
    for p, e in zip(got[0], expected[0]):
        assert_bitwise_equal(p, e, "params")
    for arg in got[1]:
        for s, e in zip(got[1][arg], expected[1][arg]):
            assert_bitwise_equal(s, e, arg)


# Each native layout that is not one dtype alone, and each catch-all (float32 compute, float64 compute,
# states of two dtypes): the threads' chunks must not change a bit, nor split a staged block wrongly.
THREADED = [Storage(BF16, BF16, (BF16,)), Storage(F16, F16, (F16,)), Storage(BF16, BF16, (F32,)),
            Storage(F32, BF16, (F32,)), Storage(F64, F32, (F32,)), Storage(BF16, F16, (BF16, F32))]


@pytest.mark.parametrize("storage", THREADED, ids=repr)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_storage_thread_counts_agree_bitwise(case, storage, isa):
    hyper = case.grid[-1]
    problem = make_problem(case, hyper, storage, BIG, steps=2, seed=3, specials=True)
    expected = run(case, hyper, problem, 1, [0] * 64, "numpy", None)
    previous = fo.get_num_threads()
    try:
        for level in supported_isas():
            for count in (1, 2, 3):
                fo.set_num_threads(count)
                got = run(case, hyper, problem, 1, [2] * 64, "cpp", level)
                for i, (p, e) in enumerate(zip(got[0], expected[0])):
                    assert_bitwise_equal(p, e, f"{case.name} {storage!r} {level} {count} threads: params[{i}]")
                for arg in got[1]:
                    for i, (x, e) in enumerate(zip(got[1][arg], expected[1][arg])):
                        assert_bitwise_equal(x, e, f"{case.name} {storage!r} {level} {count} threads: {arg}[{i}]")
    finally:
        fo.set_num_threads(previous)


# --- What the validator accepts, and how it words the rest ---

def adam_operands(param, grad, state, n=5):
    return (np.ones(n, param), np.ones(n, grad), np.zeros(n, state), np.zeros(n, state))


@pytest.mark.parametrize("backend", fo.available_backends())
@pytest.mark.parametrize("param,grad,state,message", [
    (F32, F64, F32, "grads is float64 but params is float32; with float32 params, grads may be float32, bfloat16, "
                    "float16"),
    (BF16, BF16, F16, "exp_avgs is float16 but params is bfloat16; with bfloat16 params, exp_avgs may be bfloat16, "
                      "float32"),
    (F16, F16, F64, "exp_avgs is float64 but params is float16; with float16 params, exp_avgs may be float16, float32"),
    (F64, F64, BF16, "exp_avgs is bfloat16 but params is float64; with float64 params, exp_avgs may be float64, "
                     "float32"),
    (np.dtype(np.int32), F32, F32, "params has dtype int32; supported: float64, float32, bfloat16, float16, and "
                                   "complex64 and complex128 as pairs of reals"),
])
def test_unsupported_storage_is_a_type_error_naming_the_argument(param, grad, state, message, backend):
    p, g, m, v = adam_operands(param, grad, state)
    before = [x.copy() for x in (p, m, v)]
    with pytest.raises(TypeError) as e:
        fo.adam_(p, g, m, v, step=1, backend=backend)
    assert str(e.value) == message
    for x, b in zip((p, m, v), before):
        assert_bitwise_equal(x, b)


def test_one_call_keeps_each_state_in_one_dtype():
    p, g, m, v = adam_operands(BF16, BF16, BF16)
    with pytest.raises(TypeError, match=r"exp_avgs\[1\] is float32 but exp_avgs\[0\] is bfloat16"):
        fo.adam_([p, p.copy()], [g, g], [m, m.astype(F32)], [v, v.copy()], step=1)


@pytest.mark.parametrize("backend", fo.available_backends())
def test_grads_of_any_allowed_dtype_step_as_their_widened_values(backend):
    """A grad the kernels do not read directly (bfloat16 or float16 grads of float64 params, grads of
    mixed dtypes in one call) is widened exactly: the step equals the one on the widened grads."""
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(100).astype(d) for d in (BF16, F16, F32)]
    for param_dtype in (F64, BF16):
        params = [rng.standard_normal(100).astype(param_dtype) for _ in grads]
        compute = _storage.compute_dtype(param_dtype)
        mixed = [p.copy() for p in params]
        fo.sgd_(mixed, grads, lr=0.1, backend=backend)
        widened = [p.copy() for p in params]
        fo.sgd_(widened, [g.astype(compute) for g in grads], lr=0.1, backend=backend)
        for a, b in zip(mixed, widened):
            assert_bitwise_equal(a, b, f"{param_dtype} params")
