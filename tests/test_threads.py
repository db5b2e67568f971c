"""Threads: every thread count gives the reference's bits, and the setting behaves."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedoptim as fo
from conftest import BIG, CASE_BY_NAME, CASES, DTYPES, assert_bitwise_equal, make_problem, run, supported_isas

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


# Lists of small tensors, empty ones among them, now and then one big enough to be cut inside
# (LAMB's first pass cuts only between its 1024-element blocks).
small_lists = st.lists(st.one_of(st.integers(0, 3000), st.sampled_from([0, 1, 1023, 1024, 1025]),
                                 st.integers(0, 40000)), min_size=1, max_size=150)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_lists_of_small_tensors_agree_bitwise_for_every_thread_count(data, threads):
    """A step is split by total work across tensor boundaries; no cut changes a bit."""
    case = CASE_BY_NAME[data.draw(st.sampled_from(["adam", "lamb", "sgd", "rmsprop"]), label="rule")]
    hyper = data.draw(st.sampled_from(case.grid), label="hyper")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    sizes = data.draw(small_lists, label="sizes")
    short = 2 * fo._backends._kernels.THREAD_BYTES // np.dtype(dtype).itemsize - sum(sizes)
    if short > 0:  # a filler somewhere in the list, so that two threads or more take part
        sizes.insert(data.draw(st.integers(0, len(sizes)), label="filler at"), short)
    offsets = data.draw(st.lists(st.sampled_from([0, 4, 8, 16, 24, 32, 48]), min_size=len(sizes) * 6,
                                 max_size=len(sizes) * 6), label="offsets")
    problem = make_problem(case, hyper, dtype, sizes, steps=2, seed=data.draw(st.integers(0, 2**32 - 1)),
                           specials=False)
    expected = run(case, hyper, problem, 1, offsets, "numpy", None)
    for count in (1, 2, 3, 4):
        fo.set_num_threads(count)
        got = run(case, hyper, problem, 1, offsets, "cpp", None)
        for i, (p, e) in enumerate(zip(got[0], expected[0])):
            assert_bitwise_equal(p, e, f"{case.name} {hyper} {count} threads: params[{i}]")
        for arg in got[1]:
            for i, (s, e) in enumerate(zip(got[1][arg], expected[1][arg])):
                assert_bitwise_equal(s, e, f"{case.name} {hyper} {count} threads: {arg}[{i}]")


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


# fp32 elements per thread a step pays for: a step of k * PER_THREAD elements uses k threads.
PER_THREAD = fo._backends._kernels.THREAD_BYTES // 4


def adam_step(n):
    """One fp32 Adam step over n elements, on up to n // PER_THREAD threads."""
    p, g, m, v = (np.full(n, 0.5, np.float32) for _ in range(4))
    fo.adam_(p, g, m, v, step=1, lr=0.1)
    return p


def test_pool_shrinks_to_the_setting(threads):
    fo.set_num_threads(64)
    adam_step(64 * PER_THREAD)  # 64 threads: 63 workers
    assert pool_stats()[0] == 63
    fo.set_num_threads(2)
    assert pool_stats()[0] == 1  # the surplus has exited before set_num_threads returns
    adam_step(4 * PER_THREAD)
    assert pool_stats()[0] == 1
    fo.set_num_threads(1)
    assert pool_stats()[0] == 0


def test_a_step_wakes_only_the_workers_it_uses(threads):
    fo.set_num_threads(64)
    adam_step(64 * PER_THREAD)
    workers, before = pool_stats()
    assert workers == 63
    adam_step(8 * PER_THREAD)  # the caller and 7 workers
    workers, after = pool_stats()
    assert workers == 63 and after - before == 7
    adam_step(2 * PER_THREAD - 1)  # too small for a second thread
    assert pool_stats() == (63, after)


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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_views_of_flat_buffers_agree_bitwise(data, isa, threads):
    """Consecutive views of one buffer per operand (a flat arena's) step as one array where every
    operand continues (cpp/step.cpp); some operands packed and some not, or a two-pass rule, as
    separate tensors. Either way, every thread count and ISA level gives the reference's bits."""
    case = CASE_BY_NAME[data.draw(st.sampled_from(["adam", "lamb", "sgd", "rmsprop", "adagrad"]), label="rule")]
    hyper = data.draw(st.sampled_from(case.grid), label="hyper")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    sizes = data.draw(st.lists(st.one_of(st.integers(0, 3000), st.integers(0, 70000)), min_size=1, max_size=40),
                      label="sizes")
    problem = make_problem(case, hyper, dtype, sizes, steps=2, seed=data.draw(st.integers(0, 2**32 - 1)),
                           specials=False)
    operands = ["params", "grads", *problem[1]]
    all_but_one = [[o for o in operands if o != left_out] for left_out in operands]
    packed = data.draw(st.one_of(st.just(operands), st.sampled_from(all_but_one),
                                 st.lists(st.sampled_from(operands), unique=True)), label="packed")
    offsets = data.draw(st.lists(st.sampled_from([0, 4, 8, 16, 24, 32, 48]), min_size=len(sizes) * 6,
                                 max_size=len(sizes) * 6), label="offsets")
    expected = run(case, hyper, problem, 1, offsets, "numpy", None)
    for level in supported_isas():
        for count in (1, 2, 3):
            fo.set_num_threads(count)
            got = run(case, hyper, problem, 1, offsets, "cpp", level, packed)
            for i, (p, e) in enumerate(zip(got[0], expected[0])):
                assert_bitwise_equal(p, e, f"{case.name} {hyper} {level} {count} threads {packed}: params[{i}]")
            for arg in got[1]:
                for i, (s, e) in enumerate(zip(got[1][arg], expected[1][arg])):
                    assert_bitwise_equal(s, e, f"{case.name} {hyper} {level} {count} threads {packed}: {arg}[{i}]")
