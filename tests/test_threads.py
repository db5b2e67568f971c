"""Threads: every thread count gives the reference's bits, and the setting behaves."""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import CASES, DTYPES, supported_isas
from test_contract import make_problem, run
from conftest import assert_bitwise_equal

pytestmark = pytest.mark.skipif("cpp" not in fo.available_backends(), reason="needs the cpp extension")

# Together above the size at which a step starts using threads (1 << 17 elements), split so
# chunk bounds fall mid-vector and tensors end mid-chunk.
BIG = [150001, 37, 70003]


@pytest.fixture
def threads():
    previous = fo.get_num_threads()
    yield
    fo.set_num_threads(previous)


# float64 too: only there does a change in the order of LAMB's sums show (a float32 trust
# ratio rounds it away).
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_thread_counts_agree_bitwise(case, dtype, isa, threads):
    for k, hyper in enumerate(case.grid[:: max(1, len(case.grid) // 4)]):
        problem = make_problem(case, hyper, dtype, BIG, steps=2, seed=k, specials=k % 2 == 1)
        expected = run(case, hyper, problem, 1, [0] * 64, "numpy", None)
        for level in supported_isas():
            for count in (1, 2, 3):
                fo.set_num_threads(count)
                got = run(case, hyper, problem, 1, [4 * (k % 3)] * 64, "cpp", level)
                for i, (p, e) in enumerate(zip(got[0], expected[0])):
                    assert_bitwise_equal(p, e, f"{case.name} {hyper} {level} {count} threads: params[{i}]")
                for arg in got[1]:
                    for i, (s, e) in enumerate(zip(got[1][arg], expected[1][arg])):
                        assert_bitwise_equal(s, e, f"{case.name} {hyper} {level} {count} threads: {arg}[{i}]")


def test_set_num_threads(threads):
    previous = fo.set_num_threads(3)
    assert fo.get_num_threads() == 3
    assert fo.set_num_threads(previous) == 3
    for bad, error in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="num_threads"):
            fo.set_num_threads(bad)
    assert fo.get_num_threads() == previous


def test_show_config_reports_threads(capsys, threads):
    fo.set_num_threads(2)
    fo.show_config()
    assert "threads            : 2" in capsys.readouterr().out


def test_environment_sets_default_threads():
    import subprocess
    import sys

    code = "import fusedoptim as fo; print(fo.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env={"FUSEDOPTIM_NUM_THREADS": "5", "PATH": ""},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "5"


def test_roof_kernel_streams_the_sum_of_its_reads(threads):
    rng = np.random.default_rng(0)
    for count in (1, 2):
        fo.set_num_threads(count)
        for n in (0, 1, 17, 300001):
            reads = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
            expected = ((reads[0] + reads[1]) + reads[2]) + reads[3]
            writes = [reads[0], reads[2], np.empty(n, np.float32)]
            fo._backends._kernels.roof(reads, writes)
            for w in writes:
                assert_bitwise_equal(w, expected, f"roof n={n}")
