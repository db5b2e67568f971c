"""Threads: every thread count gives the reference's bits, and the setting behaves."""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import BIG, CASES, DTYPES, assert_bitwise_equal, make_problem, run, supported_isas

pytestmark = pytest.mark.skipif("cpp" not in fo.available_backends(), reason="needs the cpp extension")



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
    assert fo.set_num_threads(np.int64(2)) == previous and fo.get_num_threads() == 2
    assert fo.set_num_threads(fo._config.MAX_THREADS) == 2 and fo.get_num_threads() == fo._config.MAX_THREADS
    fo.set_num_threads(previous)
    for bad, error in ((0, ValueError), (-1, ValueError), (10**6, ValueError), (2**31, ValueError),
                       (fo._config.MAX_THREADS + 1, ValueError), (1.5, TypeError), (True, TypeError),
                       (np.True_, TypeError), ("2", TypeError), (None, TypeError)):
        with pytest.raises(error, match="^Invalid num_threads: "):
            fo.set_num_threads(bad)
    assert fo.get_num_threads() == previous


def test_show_config_reports_threads(capsys, threads):
    fo.set_num_threads(2)
    fo.show_config()
    assert "threads            : 2" in capsys.readouterr().out


def pool_stats():
    """(workers alive, times any worker has woken for a job)."""
    return fo._backends._kernels._pool_stats()


def adam_step(n):
    """One fp32 Adam step over n elements: n * 4 B / 64 KiB chunks, as many threads as that allows."""
    p, g, m, v = (np.full(n, 0.5, np.float32) for _ in range(4))
    fo.adam_(p, g, m, v, step=1, lr=0.1)
    return p


def test_pool_shrinks_to_the_setting(threads):
    fo.set_num_threads(64)
    adam_step(64 * 16384)  # 64 chunks: 63 workers
    assert pool_stats()[0] == 63
    fo.set_num_threads(2)
    assert pool_stats()[0] == 1  # the surplus has exited before set_num_threads returns
    adam_step(1 << 18)
    assert pool_stats()[0] == 1
    fo.set_num_threads(1)
    assert pool_stats()[0] == 0


def test_a_step_wakes_only_the_workers_it_uses(threads):
    fo.set_num_threads(64)
    adam_step(64 * 16384)
    workers, before = pool_stats()
    assert workers == 63
    adam_step(8 * 16384)  # 8 chunks: the caller and 7 workers
    workers, after = pool_stats()
    assert workers == 63 and after - before == 7


def test_thread_counts_give_one_result_after_the_pool_grew_and_shrank(threads):
    fo.set_num_threads(1)
    expected = adam_step(1 << 20)
    for count in (64, 2, 5, 1, 3):
        fo.set_num_threads(count)
        assert_bitwise_equal(adam_step(1 << 20), expected, f"{count} threads")


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
