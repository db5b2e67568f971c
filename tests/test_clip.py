"""clip_grad_norm_: one norm, the same bits on every backend, ISA level and thread count; torch's
semantics; bad input refused before anything changes."""

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedoptim as fo
from conftest import BIG, DTYPES, assert_bitwise_equal, backends, placed

EPS64 = 2.0**-53  # a float64 rounding, relative
EPS32 = 2.0**-24


@pytest.fixture
def threads():
    previous = fo.get_num_threads()
    yield
    fo.set_num_threads(previous)


def clipped(grads, max_norm, backend, isa=None, **options):
    """(norm, grads clipped) from copies of ``grads``, each placed off a 64-byte boundary as given."""
    if isa is not None:
        fo.set_isa(isa)
    copies = [placed(g, offset) for g, offset in grads]
    with np.errstate(all="ignore"):
        norm = fo.clip_grad_norm_(copies, max_norm, backend=backend, **options)
    return norm, copies


def assert_same(actual, expected, what):
    norm, grads = actual
    assert norm == expected[0] or math.isnan(norm) and math.isnan(expected[0]), f"{what}: {norm!r} != {expected[0]!r}"
    for i, (g, e) in enumerate(zip(grads, expected[1])):
        assert_bitwise_equal(g, e, f"{what}: grads[{i}]")


def make_grads(rng, sizes, dtypes, scale=1.0, specials=False):
    grads = []
    for n, dtype in zip(sizes, dtypes):
        g = (rng.standard_normal(n) * scale).astype(dtype)
        if specials and n:
            g[rng.integers(0, n)] = rng.choice([np.nan, np.inf, -np.inf])
        grads.append((g, int(rng.choice([0, 4, 8, 12, 32]) if dtype == np.float32 else rng.choice([0, 8, 24]))))
    return grads


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_backends_isa_levels_and_thread_counts_agree_bitwise(data, isa, threads):
    size = st.one_of(st.integers(0, 70), st.integers(0, 5000), st.sampled_from([1023, 1024, 1025]))
    sizes = data.draw(st.lists(size, min_size=0, max_size=4), label="sizes")
    if data.draw(st.booleans(), label="big (on threads)"):
        sizes += BIG
    dtypes = [data.draw(st.sampled_from(DTYPES)) for _ in sizes]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    grads = make_grads(rng, sizes, dtypes, scale=data.draw(st.sampled_from([1e-3, 1.0, 1e3])),
                       specials=data.draw(st.booleans(), label="nan/inf"))
    max_norm = data.draw(st.sampled_from([0.0, 1e-3, 1.0, 50.0, 1e9]), label="max_norm")
    expected = clipped(grads, max_norm, "numpy")
    for label, backend, level in backends():
        counts = [1, 2, 3] if backend == "cpp" else [1]
        for count in counts:
            if backend == "cpp":
                fo.set_num_threads(count)
            assert_same(clipped(grads, max_norm, backend, level), expected, f"{label}, {count} threads")


def test_the_norm_is_within_its_rounding_of_the_exact_one():
    """In float64, any order of summing n squares errs by at most (n - 1) roundings of the sum (the
    squares of float32 values are exact), and the square root adds half of one."""
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(n).astype(np.float32) * np.float32(s)
             for n, s in [(100_003, 1e-2), (517, 40.0), (1, 3.0)]]
    exact = math.fsum(float(x) * float(x) for g in grads for x in g)
    n = sum(g.size for g in grads)
    for backend in fo.available_backends():
        norm = fo.clip_grad_norm_([g.copy() for g in grads], 1e9, backend=backend)
        assert abs(norm**2 - exact) <= ((n - 1) * EPS64 + 2 * EPS64) * exact * 1.01


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_clipped_grads_are_within_two_roundings_of_the_exact_ones(dtype):
    """Each clipped element is grad * coef with coef nearly exact in float64: rounding coef to the
    dtype and rounding the product are the only two errors of any size."""
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(n).astype(dtype) for n in (5000, 33, 1)]
    exact_norm = math.sqrt(math.fsum(float(x) ** 2 for g in grads for x in g))
    coef = 0.5 / (exact_norm + 1e-6)
    ours = [g.copy() for g in grads]
    fo.clip_grad_norm_(ours, 0.5)
    eps = np.finfo(dtype).eps / 2
    for g, o in zip(grads, ours):
        truth = g.astype(np.float64) * coef
        assert np.all(np.abs(o - truth) <= (2 * eps + 4 * EPS64) * np.abs(truth) + np.finfo(dtype).smallest_subnormal)


def test_matches_torch():
    """The same formula as torch.nn.utils.clip_grad_norm_, norm included (torch sums in float32)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(n).astype(np.float32) for n in (4096, 100, 7)]
    ours = [g.copy() for g in grads]
    norm = fo.clip_grad_norm_(ours, 2.0)
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())
    theirs = torch.nn.utils.clip_grad_norm_(params, 2.0)
    n = sum(g.size for g in grads)
    # torch's float32 sum errs by at most (n - 1) float32 roundings; sqrt halves a relative error.
    assert norm == pytest.approx(float(theirs), rel=n * EPS32)
    for o, p in zip(ours, params):
        np.testing.assert_allclose(o, p.grad.numpy(), rtol=n * EPS32 + 4 * EPS32)


@pytest.mark.parametrize("special", [np.inf, np.nan])
def test_an_inf_or_nan_norm_scales_as_torch_does_or_raises_when_asked(special):
    torch = pytest.importorskip("torch")
    grads = [np.array([1.0, -2.0, 0.0, -0.0], np.float32), np.array([special, 3.0], np.float32)]
    for backend in fo.available_backends():
        refused = [g.copy() for g in grads]
        with pytest.raises(RuntimeError, match="total norm of the gradients is (inf|nan)"):
            fo.clip_grad_norm_(refused, 1.0, error_if_nonfinite=True, backend=backend)
        for r, g in zip(refused, grads):
            assert_bitwise_equal(r, g, "refused")
        ours = [g.copy() for g in grads]
        with np.errstate(all="ignore"):
            norm = fo.clip_grad_norm_(ours, 1.0, backend=backend)
        params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        theirs = torch.nn.utils.clip_grad_norm_(params, 1.0)
        assert math.isnan(norm) == math.isnan(theirs) and math.isinf(norm) == math.isinf(theirs)
        for o, p in zip(ours, params):
            assert_bitwise_equal(o, p.grad.numpy(), backend)


def test_grads_under_the_max_norm_are_left_as_they_are():
    grads = [np.array([3.0, 4.0], np.float32)]  # norm 5
    assert fo.clip_grad_norm_(grads, 5.00001) == 5.0  # coef = 5.00001 / (5 + 1e-6) > 1
    assert grads[0].tolist() == [3.0, 4.0]
    assert fo.clip_grad_norm_([], 1.0) == 0.0


def test_a_fortran_ordered_grad_is_summed_in_its_memory_order():
    rng = np.random.default_rng(6)
    c = rng.standard_normal((300, 70)).astype(np.float32)
    f = c.T.copy(order="F")  # c's bytes, in c's order: its transpose
    assert f.flags.f_contiguous and f.tobytes(order="A") == c.tobytes()
    norm_c, norm_f = fo.clip_grad_norm_(c, 1.0), fo.clip_grad_norm_(f, 1.0)
    assert norm_c == norm_f
    assert_bitwise_equal(f.T, c, "F-ordered grad")


def bad_inputs():
    """(label, grads, max_norm, error, message)."""
    ok = np.ones(4, np.float32)
    read_only = np.ones(4, np.float32)
    read_only.flags.writeable = False
    shared = np.ones(8, np.float32)
    return [
        ("a list", [[1.0, 2.0]], 1.0, TypeError,
         "grads[0] must be a writeable NumPy array (it is updated in place), got list"),
        ("read-only", [ok, read_only], 1.0, ValueError, "grads[1] is read-only"),
        ("int32", [ok, np.ones(3, np.int32)], 1.0, TypeError, "grads[1] has dtype int32"),
        ("strided", [ok, np.ones(8, np.float32)[::2]], 1.0, ValueError, "grads[1] is not dense in memory"),
        ("overlapping", [shared[:5], shared[4:]], 1.0, ValueError, "grads[0] and grads[1] overlap in memory"),
        ("negative max_norm", [ok], -1.0, ValueError, "Invalid max_norm: -1.0 (must be >= 0.0)"),
        ("NaN max_norm", [ok], float("nan"), ValueError, "Invalid max_norm: nan (must be finite)"),
        ("a single bad grad", read_only, 1.0, ValueError, "grads is read-only"),
    ]


@pytest.mark.parametrize("label,grads,max_norm,error,message", bad_inputs(), ids=[b[0] for b in bad_inputs()])
def test_bad_input_is_refused_before_anything_changes(label, grads, max_norm, error, message):
    before = [np.array(g, copy=True) for g in (grads if isinstance(grads, list) else [grads])]
    with pytest.raises(error, match=re.escape(message)):
        fo.clip_grad_norm_(grads, max_norm)
    for g, b in zip(grads if isinstance(grads, list) else [grads], before):
        assert np.array_equal(np.asarray(g), b)
