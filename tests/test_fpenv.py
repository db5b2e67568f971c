"""The floating-point environment (DESIGN.md, contract point 7): every thread of a step rounds to
nearest with no flush-to-zero (FTZ) and no denormals-are-zero (DAZ), whatever the caller set,
and the caller's environment is the same after the step.

The caller's MXCSR is set through the C library (fegetenv/fesetenv), as torch.set_flush_denormal
does for the calling thread; that needs glibc on x86-64.
"""

import ctypes
import os
import platform

import numpy as np
import pytest

import fusedoptim as fo
from conftest import BIG, CASES, DTYPES, assert_bitwise_equal, make_problem, run, supported_isas
from fusedoptim import _fpenv

FTZ, DAZ = 0x8000, 0x0040

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not hasattr(os, "confstr")
    or not os.confstr("CS_GNU_LIBC_VERSION"), reason="sets MXCSR through glibc on x86-64")


class _Fenv(ctypes.Structure):
    """glibc's fenv_t on x86-64: the x87 environment, then MXCSR."""
    _fields_ = [("x87", ctypes.c_uint8 * 28), ("mxcsr", ctypes.c_uint32)]


_libm = ctypes.CDLL("libm.so.6")


def mxcsr():
    env = _Fenv()
    assert _libm.fegetenv(ctypes.byref(env)) == 0
    return env.mxcsr


def set_mxcsr(value):
    env = _Fenv()
    assert _libm.fegetenv(ctypes.byref(env)) == 0
    env.mxcsr = value
    assert _libm.fesetenv(ctypes.byref(env)) == 0


@pytest.fixture
def flushing():
    """FTZ and DAZ on in this thread for the test (it gets the MXCSR value); the old one after."""
    saved = mxcsr()
    set_mxcsr(saved | FTZ | DAZ)
    yield saved | FTZ | DAZ
    set_mxcsr(saved)


@pytest.fixture
def threads():
    previous = fo.get_num_threads()
    yield
    fo.set_num_threads(previous)


def subnormal_problem(case, hyper, dtype, seed):
    """make_problem's operands scaled down to the smallest normal number: most are subnormal,
    and so are many of a step's intermediate values and results."""
    params, states, grads = make_problem(case, hyper, dtype, BIG, steps=2, seed=seed, specials=False)
    tiny = np.finfo(dtype).smallest_normal
    scale = lambda arrays: [a * tiny for a in arrays]  # noqa: E731
    problem = scale(params), {arg: scale(s) for arg, s in states.items()}, [scale(g) for g in grads]
    assert np.count_nonzero(np.abs(problem[0][0]) < tiny) > BIG[0] // 2
    return problem


def hypers(case):
    return case.grid[:: max(1, len(case.grid) // 3)]


def problems():
    """(case, hyper, dtype, problem, the reference's result under the default environment)."""
    assert mxcsr() & (FTZ | DAZ) == 0
    for case in CASES:
        for dtype in DTYPES:
            for k, hyper in enumerate(hypers(case)):
                problem = subnormal_problem(case, hyper, dtype, k)
                yield case, hyper, dtype, problem, run(case, hyper, problem, 1, [0] * 64, "numpy", None)


def assert_same_result(got, expected, what):
    for i, (p, e) in enumerate(zip(got[0], expected[0])):
        assert_bitwise_equal(p, e, f"{what}: params[{i}]")
    for arg in got[1]:
        for i, (s, e) in enumerate(zip(got[1][arg], expected[1][arg])):
            assert_bitwise_equal(s, e, f"{what}: {arg}[{i}]")


@pytest.fixture(scope="module")
def reference_results():
    return list(problems())


def test_cpp_steps_keep_subnormals_whatever_the_callers_mxcsr(reference_results, isa, threads, flushing):
    for case, hyper, dtype, problem, expected in reference_results:
        for level in supported_isas():
            for count in (1, 2, 3):
                fo.set_num_threads(count)
                got = run(case, hyper, problem, 1, [8] * 64, "cpp", level)
                assert mxcsr() == flushing, "the caller's environment must come back after a step"
                assert_same_result(got, expected, f"{case.name} {np.dtype(dtype).name} {hyper} {level} {count} threads")


def test_contract_context_runs_numpy_without_flushing_and_restores(flushing):
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    assert tiny * np.float32(3) == 0  # DAZ: numpy sees the caller's environment
    with _fpenv.contract():
        assert mxcsr() & (FTZ | DAZ) == 0
        assert tiny * np.float32(3) == 3 * np.finfo(np.float32).smallest_subnormal
        with np.errstate(over="ignore"):
            np.float32(1e30) * np.float32(1e30)  # raises the overflow flag inside the block only
    assert mxcsr() == flushing


def test_numpy_and_numba_backends_keep_subnormals_whatever_the_callers_mxcsr(reference_results, flushing):
    backends = [b for b in ("numpy", "numba") if b in fo.available_backends()]
    for case, hyper, dtype, problem, expected in reference_results:
        for backend in backends:
            got = run(case, hyper, problem, 1, [8] * 64, backend, None)
            assert mxcsr() == flushing
            assert_same_result(got, expected, f"{case.name} {np.dtype(dtype).name} {hyper} {backend}")


def test_after_torch_set_flush_denormal(reference_results, threads):
    """The issue's own case: torch sets FTZ and DAZ on the calling thread."""
    torch = pytest.importorskip("torch")
    case, hyper, dtype, problem, expected = reference_results[0]
    assert torch.set_flush_denormal(True)
    try:
        flushed = mxcsr()
        assert flushed & FTZ and flushed & DAZ
        for count in (1, 2):
            fo.set_num_threads(count)
            got = run(case, hyper, problem, 1, [0] * 64, "cpp", None)
            assert mxcsr() == flushed
            assert_same_result(got, expected, f"{case.name} {hyper} {count} threads after set_flush_denormal")
    finally:
        torch.set_flush_denormal(False)
