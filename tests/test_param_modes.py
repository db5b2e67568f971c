"""Param modes and loss scaling (_storage's semantics): master weights, stochastic and Kahan rounding,
grad_scale, found_inf and unscale_and_check_. cpp at every ISA level and thread count == numba ==
the reference, bit for bit; the hash's statistics; a skipped step changes nothing; bad input raises
before anything changes."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedoptim as fo
from fusedoptim import _storage
from conftest import (BF16, BIG, CASES, F16, F32, F64, Storage, assert_bitwise_equal, backends, make_problem, placed,
                      run_python, supported_isas)

# Each mode with the param storages it takes (grads and states varied too).
MODES = {
    "master": [Storage(BF16, BF16, (F32,)), Storage(F16, F16, (F16,)), Storage(BF16, F32, (BF16,))],
    "kahan": [Storage(BF16, BF16, (BF16,)), Storage(F16, F16, (F32,)), Storage(BF16, F16, (F32, BF16))],
    "stochastic": [Storage(BF16, BF16, (BF16,)), Storage(BF16, F32, (F32,))],
    "scaled": [Storage(F32, F32, (F32,)), Storage(F64, F64, (F32,)), Storage(BF16, BF16, (BF16,)),
               Storage(F16, F16, (F32,))],
    "scaled kahan": [Storage(BF16, BF16, (F32,))],
}


def mode_arrays(mode, params, seed):
    """The arrays a mode keeps per param: float32 masters near the params (which are the masters
    rounded), or compensations (what a float32 value near the param lost in its rounding)."""
    rng = np.random.default_rng(seed)
    if mode == "master":
        masters = [p.astype(F32) * (1 + rng.uniform(-2**-9, 2**-9, p.shape)).astype(F32) for p in params]
        return {"master_params": masters}
    if "kahan" in mode:
        comps = []
        for p in params:
            with np.errstate(all="ignore"):
                x = p.astype(F32) * (1 + rng.uniform(-2**-9, 2**-9, p.shape)).astype(F32)
                comps.append(np.nan_to_num(x - x.astype(p.dtype).astype(F32)).astype(p.dtype))
        return {"compensations": comps}
    return {}


def run_modes(case, hyper, problem, mode, arrays, first_step, offsets, backend, isa, seed=5):
    """Steps placed copies of ``problem`` and the mode's ``arrays``; returns every written array by name."""
    if isa is not None:
        fo.set_isa(isa)
    initial_params, initial_states, grad_steps = problem
    place = iter(offsets * 4)
    params = [placed(p, next(place)) for p in initial_params]
    states = {arg: [placed(s, next(place)) for s in a] for arg, a in initial_states.items()}
    extra = {arg: [placed(s, next(place)) for s in a] for arg, a in arrays.items()}
    options = dict(rounding="kahan" if "kahan" in mode else "stochastic" if mode == "stochastic" else "nearest",
                   seed=seed, grad_scale=3000.0 if "scaled" in mode else None)  # not a power of 2: the op order shows
    with np.errstate(all="ignore"):
        for k, grads in enumerate(grad_steps):
            step = {"step": first_step + k} if case.takes_step else {}
            scale = 3000.0 if "scaled" in mode else 1.0
            case.functional(params, [placed((g.astype(F64) * scale).astype(g.dtype), next(place)) for g in grads],
                            **states, **extra, **hyper, **step, **options, backend=backend)
    return {"params": params, **states, **extra}


def assert_modes_match(case, hyper, problem, mode, arrays, first_step, offsets):
    expected = run_modes(case, hyper, problem, mode, arrays, first_step, offsets, "numpy", None)
    for label, backend, isa in backends():
        got = run_modes(case, hyper, problem, mode, arrays, first_step, offsets, backend, isa)
        for arg, values in got.items():
            for i, (a, e) in enumerate(zip(values, expected[arg])):
                assert_bitwise_equal(a, e, f"{case.name} {mode} {hyper} {label}: {arg}[{i}]")


sizes = st.one_of(st.integers(0, 70), st.integers(0, 3000), st.sampled_from([1, 7, 8, 9, 15, 16, 17, 1023, 1025]))
offsets = st.lists(st.sampled_from([0, 0, 2, 4, 8, 24, 32, 56, 1, 3]), min_size=64, max_size=64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=repr)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_backends_agree_bitwise_in_every_mode(case, mode, isa, data):
    hyper = data.draw(st.sampled_from(case.grid), label="hyper")
    storage = data.draw(st.sampled_from(MODES[mode]), label="storage")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    problem = make_problem(case, hyper, storage, data.draw(st.lists(sizes, min_size=1, max_size=3), label="sizes"),
                           data.draw(st.integers(1, 3), label="steps"), seed,
                           specials=data.draw(st.booleans(), label="nan/inf"))
    arrays = mode_arrays(mode, problem[0], seed)
    assert_modes_match(case, hyper, problem, mode, arrays, data.draw(st.sampled_from([1, 2, 1000])),
                       data.draw(offsets, label="offsets"))


@pytest.fixture
def threads():
    previous = fo.get_num_threads()
    yield
    fo.set_num_threads(previous)


@pytest.mark.skipif("cpp" not in fo.available_backends(), reason="needs the cpp extension")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("adam", "lamb", "sgd")], ids=repr)
def test_thread_counts_agree_bitwise_in_every_mode(case, mode, isa, threads):
    hyper = case.grid[-1]
    problem = make_problem(case, hyper, MODES[mode][0], BIG, steps=2, seed=1, specials=True)
    arrays = mode_arrays(mode, problem[0], 1)
    expected = run_modes(case, hyper, problem, mode, arrays, 1, [0] * 64, "numpy", None)
    for level in supported_isas():
        for count in (1, 2, 3):
            fo.set_num_threads(count)
            got = run_modes(case, hyper, problem, mode, arrays, 1, [8] * 64, "cpp", level)
            for arg, values in got.items():
                for i, (a, e) in enumerate(zip(values, expected[arg])):
                    assert_bitwise_equal(a, e, f"{case.name} {mode} {level} {count} threads: {arg}[{i}]")


# Master weights that a native layout steps (the master loaded, the master and the rounded param
# stored in the same pass), and some that stay on the staging catch-all.
NATIVE_MASTERS = [Storage(BF16, BF16, (F32,)), Storage(BF16, BF16, (BF16,))]
STAGED_MASTERS = [Storage(F16, F16, (F32,)), Storage(BF16, F32, (BF16,))]


@pytest.mark.skipif("cpp" not in fo.available_backends(), reason="needs the cpp extension")
def test_master_weights_take_a_native_layout_unless_scaled():
    name = {BF16: "bfloat16", F16: "float16", F32: "float32"}
    is_native = fo._backends._kernels._is_native
    for storage in NATIVE_MASTERS:
        dtypes = name[storage.param], name[storage.grad], name[storage.states[0]]
        assert is_native(*dtypes, True, 1.0), storage
        assert not is_native(*dtypes, True, 3000.0), storage  # grad_scale stays on the staging path
    for storage in STAGED_MASTERS:
        assert not is_native(name[storage.param], name[storage.grad], name[storage.states[0]], True, 1.0), storage
    assert not is_native("float32", "float32", "float32", True, 1.0)  # the native fp32 layout has no master


@pytest.mark.parametrize("case", CASES, ids=repr)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_native_master_weights_agree_bitwise(case, isa, threads, data):
    """The native master layouts at every level and 1 or 2 threads, with the masters placed apart
    from their params (so the vector loop's alignment, which follows the master, misaligns the rest)."""
    hyper = data.draw(st.sampled_from(case.grid), label="hyper")
    storage = data.draw(st.sampled_from(NATIVE_MASTERS), label="storage")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    big = st.sampled_from([40001, 70003])  # big enough for a second thread
    problem = make_problem(case, hyper, storage, data.draw(st.lists(st.one_of(sizes, big), min_size=1, max_size=3),
                                                           label="sizes"),
                           data.draw(st.integers(1, 2), label="steps"), seed,
                           specials=data.draw(st.booleans(), label="nan/inf"))
    arrays = mode_arrays("master", problem[0], seed)
    if "cpp" in fo.available_backends():
        fo.set_num_threads(data.draw(st.integers(1, 2), label="threads"))
    assert_modes_match(case, hyper, problem, "master", arrays, data.draw(st.sampled_from([1, 2, 1000])),
                       data.draw(offsets, label="offsets"))


def test_modes_change_what_they_say():
    """Guards the comparisons above: each mode's result differs from the plain step's as it should."""
    rng = np.random.default_rng(0)
    p32 = (1 + rng.random(4096)).astype(F32)  # bf16's ulp is 2^-7 in [1, 2)
    g = rng.uniform(-1, 1, 4096).astype(BF16)  # lr * g is below half of it

    def step(**kw):
        p = p32.astype(BF16)
        fo.sgd_(p, g, lr=1e-3, **kw)
        return p, kw

    plain, _ = step()
    assert np.array_equal(plain, p32.astype(BF16))  # each update is below half a bf16 ulp: lost
    sr, _ = step(rounding="stochastic", seed=1)
    assert 0 < np.count_nonzero(sr != plain) < 4096  # some updates survive
    kahan, kw = step(rounding="kahan", compensations=np.zeros(4096, BF16))
    assert np.array_equal(kahan, plain) and np.any(kw["compensations"] != 0)  # kept in the compensation
    master, kw = step(master_params=p32.copy())
    assert np.array_equal(master, kw["master_params"].astype(BF16)) and not np.array_equal(kw["master_params"], p32)


def test_stochastic_rounding_is_unbiased_and_keyed():
    """Rounding 1 + 2^-9 (a quarter of bf16's ulp above 1) goes up a quarter of the time, within
    5 standard deviations; another seed, step or param index gives other bits."""
    n = 1 << 16
    x = np.full(n, 1 + 2.0**-9, F32)
    up = np.count_nonzero(_storage.narrow_stochastic(x, _storage.rounding_key(0, 1, 0)) != 1)
    assert abs(up - n / 4) < 5 * np.sqrt(n * 0.25 * 0.75)
    keys = {_storage.rounding_key(*k) for k in [(0, 1, 0), (1, 1, 0), (0, 2, 0), (0, 1, 1)]}
    assert len(keys) == 4
    bits = [_storage.stochastic_bits(k, 0, 1000) for k in keys]
    assert all(not np.array_equal(a, b) for a in bits for b in bits if a is not b)


def test_the_hash_is_murmur3s_finalizer():
    """mix32 against known outputs of murmur3's fmix32, so that another implementation can reproduce the bits."""
    assert _storage.mix32(0) == 0
    assert _storage.mix32(1) == 0x514E28B7
    assert _storage.mix32(0xFFFFFFFF) == 0x81F16F39


# --- found_inf: a skipped step changes nothing ---

def snapshot(arrays):
    return [np.array(a, copy=True) for a in arrays]


@pytest.mark.parametrize("backend", fo.available_backends())
def test_found_inf_changes_nothing_functional(backend):
    rng = np.random.default_rng(0)
    p, m, v = (rng.standard_normal(100).astype(BF16) for _ in range(3))
    master = p.astype(F32)
    before = snapshot([p, m, v, master])
    g = np.full(100, np.inf, BF16)
    fo.adam_(p, g, m, v, step=2, master_params=master, grad_scale=8.0, found_inf=True, backend=backend)
    mu = fo.nadam_(p, g, m, v, step=2, mu_product=0.5, found_inf=np.float32(1.0), backend=backend)
    assert mu == 0.5
    for a, b in zip([p, m, v, master], before):
        assert_bitwise_equal(a, b, "after a skipped step")


@pytest.mark.parametrize("options", [{}, dict(master_weights=True), dict(rounding="kahan")], ids=str)
def test_found_inf_changes_nothing_stateful(options):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(BF16) for n in (10, 200)]
    opt = fo.Adam(params, lr=0.1, **options)
    opt.step([rng.standard_normal(p.shape).astype(BF16) for p in params])
    before = opt.state_dict()
    values = snapshot(params)
    opt.step([np.full(p.shape, np.nan, BF16) for p in params], grad_scale=4.0, found_inf=True)
    after = opt.state_dict()
    for a, b in zip(params, values):
        assert_bitwise_equal(a, b, "param after a skipped step")
    for i, entry in before["state"].items():
        assert after["state"][i]["step"] == entry["step"] == 1
        for k, value in entry.items():
            if k != "step":
                assert_bitwise_equal(after["state"][i][k], value, f"state[{i}][{k!r}]")
    opt.step([rng.standard_normal(p.shape).astype(BF16) for p in params])  # and the next one is step 2
    assert all(s["step"] == 2 for s in opt.state.values())


# --- unscale_and_check_ ---

@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16], ids=lambda d: d.name)
def test_unscale_and_check_agrees_bitwise(dtype, isa, threads):
    rng = np.random.default_rng(0)
    for bad in (None, np.inf, -np.inf, np.nan, 1e30):  # 1e30: a value that overflows only once scaled by 4096
        grads = [(rng.standard_normal(n) * 1e3).astype(dtype) for n in (0, 7, 300001)]
        if bad is not None:
            with np.errstate(over="ignore"):
                grads[2][123457] = dtype.type(bad) if bad != 1e30 else dtype.type(60000.0 if dtype == F16 else 1e36)
        inv = 4096.0 if bad == 1e30 else 2.0**-10
        expected = [g.copy() for g in grads]
        expected_found = fo.unscale_and_check_(expected, inv, backend="numpy")
        assert expected_found == (bad is not None and (bad != 1e30 or dtype != F64))
        configs = [("numba", "numba", None, 1)] if "numba" in fo.available_backends() else []
        configs += [(f"cpp/{level}/{t}", "cpp", level, t) for level in supported_isas() for t in (1, 2)]
        for label, backend, level, count in configs:
            if level:
                fo.set_isa(level)
                fo.set_num_threads(count)
            got = [g.copy() for g in grads]
            assert fo.unscale_and_check_(got, inv, backend=backend) == expected_found, label
            for a, e in zip(got, expected):
                assert_bitwise_equal(a, e, f"unscale {dtype.name} {label}")


def test_unscale_matches_torch_amp():
    """As torch's GradScaler unscales (a multiply by inv_scale in float32), and finds the same Inf."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    g = (rng.standard_normal(1000) * 8192).astype(np.float16)
    g[17] = np.inf
    theirs = torch.from_numpy(g.copy())
    found = torch.zeros(())
    torch._amp_foreach_non_finite_check_and_unscale_([theirs], found, torch.tensor(2.0**-12))
    ours = g.copy()
    assert fo.unscale_and_check_([ours], 2.0**-12) and found.item() == 1.0
    assert_bitwise_equal(ours, theirs.numpy(), "unscaled")


# --- Bad input: a clear error naming the argument, before anything changes ---

def test_bad_modes_raise_before_anything_changes():
    rng = np.random.default_rng(0)
    p32, pbf, pf16 = rng.standard_normal(10).astype(F32), rng.standard_normal(10).astype(BF16), np.ones(10, F16)
    shared = rng.standard_normal(20).astype(F32)  # a master whose first half is also a bf16 param
    cases = [
        (lambda: fo.Adam([p32], master_weights=True), ValueError, "Invalid master_weights: .*bfloat16 and float16.*float32"),
        (lambda: fo.Adam([pbf], rounding="up"), ValueError, "Invalid rounding: 'up'"),
        (lambda: fo.Adam([pf16], rounding="stochastic"), ValueError, "Invalid rounding: .*bfloat16 params.*float16"),
        (lambda: fo.Adam([pbf], master_weights=True, rounding="kahan"), ValueError, "Invalid rounding"),
        (lambda: fo.Adam([pbf], seed=-1), ValueError, "Invalid seed"),
        (lambda: fo.Adam([pbf], seed=1.5), TypeError, "Invalid seed"),
        (lambda: fo.Adam([pbf]).step([pbf.copy()], grad_scale=0.0), ValueError, "Invalid grad_scale"),
        (lambda: fo.Adam([pbf]).step([pbf.copy()], grad_scale="2"), TypeError, "Invalid grad_scale"),
        (lambda: fo.Adam([pbf]).step([pbf.copy()], found_inf="yes"), TypeError, "Invalid found_inf"),
        (lambda: fo.sgd_(p32, p32.copy(), master_params=p32.copy()), ValueError, "master_params .*float32"),
        (lambda: fo.sgd_(pbf, pbf.copy(), master_params=pbf.copy()), TypeError, "master_params is bfloat16"),
        (lambda: fo.sgd_(pbf, pbf.copy(), rounding="kahan"), ValueError, "compensations is required"),
        (lambda: fo.sgd_(pbf, pbf.copy(), rounding="kahan", compensations=np.zeros(10, F32)), TypeError,
         "compensations is float32"),
        (lambda: fo.sgd_(pbf, pbf.copy(), compensations=np.zeros(10, BF16)), ValueError, "compensations are for"),
        (lambda: fo.sgd_([pbf], [pbf.copy()], master_params=[pbf.astype(F32)[:5]]), ValueError,
         r"master_params\[0\] has shape"),
        (lambda: fo.sgd_(shared.view(BF16)[:20], np.ones(20, BF16), master_params=shared), ValueError,
         "params and master_params overlap"),
        (lambda: fo.unscale_and_check_([p32, p32[2:]], 0.5), ValueError, r"grads\[0\] and grads\[1\] overlap"),
        (lambda: fo.unscale_and_check_([np.arange(3)], 0.5), TypeError, r"grads\[0\] has dtype int64"),
        (lambda: fo.unscale_and_check_(p32, float("nan")), ValueError, "Invalid inv_scale"),
    ]
    before = snapshot([p32, pbf, pf16, shared])
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
        for a, b in zip([p32, pbf, pf16, shared], before):
            assert_bitwise_equal(a, b, message)


def test_torch_bad_modes_name_the_argument():
    torch = pytest.importorskip("torch")
    import fusedoptim.torch as ft
    with pytest.raises(ValueError, match="Invalid master_weights: .*param 0 of the new group is float32"):
        ft.Adam([torch.nn.Parameter(torch.ones(3))], master_weights=True)
    with pytest.raises(ValueError, match="Invalid rounding: 'nearst'"):
        ft.Adam([torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))], rounding="nearst")


def test_low_precision_example_runs_without_matplotlib():
    """examples/low_precision.py prints its table without matplotlib; every mode beats nearest rounding."""
    example = Path(__file__).parent.parent / "examples" / "low_precision.py"
    done = run_python(f"import sys; sys.argv = ['x', '--steps', '300']; exec(open({str(example)!r}).read())",
                      blocked=("matplotlib",))
    line = done.stdout.split("final loss / float32's: ")[1].splitlines()[0]
    final = dict(item.rsplit(" ", 1) for item in line.split(", "))
    assert "no plot" in done.stdout
    for mode in ("bf16 stochastic", "bf16 kahan", "bf16 master"):
        assert float(final[mode]) < float(final["bf16 nearest"]), final
