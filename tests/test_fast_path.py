"""The cpp backend's native fast path: it steps only what the Python validator accepts, and
declines (touching nothing) everything else, so errors stay the validator's, word for word."""

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _backends, bench
from fusedoptim._engine import State
from fusedoptim._rules import RULES, adam_plan

from conftest import BF16, F16, F32, F64, assert_bitwise_equal

pytestmark = pytest.mark.skipif("cpp" not in fo.available_backends(), reason="needs the cpp extension")

PLAN = adam_plan(1)


def arrays(n=33, count=4, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


# What the fast path steps: each dtype on its own, bfloat16 with float32 states (the native layouts).
NATIVE = [(F64, F64, F64), (F32, F32, F32), (BF16, BF16, BF16), (F16, F16, F16), (BF16, BF16, F32)]
# Storage the validator accepts that the fast path declines to it (the catch-all layouts run them).
DECLINED = [(F32, BF16, F32), (F32, F16, F32), (BF16, F32, BF16), (F16, BF16, F32), (BF16, F16, F32),
            (F64, F32, F32), (F64, F64, F32), (F16, F16, (F16, F32))]


@pytest.mark.parametrize("param,grad,state", NATIVE + DECLINED, ids=lambda d: str(d))
def test_steps_the_native_storage_and_declines_the_rest_untouched(param, grad, state):
    states = state if isinstance(state, tuple) else (state, state)
    p, g = arrays(1000, count=1, dtype=param)[0], arrays(1000, count=1, dtype=grad)[0]
    m, v = (a.astype(d) for a, d in zip(arrays(1000, count=2), states))
    before = [a.copy() for a in (p, m, v)]
    native = (param, grad, state) in NATIVE
    kernel = _backends._kernels.adam
    assert kernel(p, g, (m, v, None), 0b011, PLAN.scalars, 0, check_only=True) is native
    assert kernel(p, g, (m, v, None), 0b011, PLAN.scalars, 0) is native
    if not native:
        for a, b in zip((p, m, v), before):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))  # nothing touched
    # Whichever path steps it, the validated one accepts it and steps it as the reference does.
    results = []
    for backend in ("cpp", "numpy"):
        ops = [a.copy() for a in before]
        with np.errstate(invalid="ignore"):
            fo.adam_(ops[0], g, ops[1], ops[2], step=1, backend=backend)
        results.append(ops)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def bad_steps():
    """(label, params, grads, exp_avgs, exp_avg_sqs): every kind of input the validator rejects."""
    p, g, m, v = arrays()
    q = arrays(8)
    yield "bfloat16 state of float16 params", p.astype(F16), g.astype(F16), m.astype(BF16), v.astype(F16)
    yield "float64 grads of bfloat16 params", p.astype(BF16), g.astype(np.float64), m.astype(BF16), v.astype(BF16)
    yield "float16 params, float32 and float16 states in one call", [p.astype(F16), q[0].astype(F16)], \
        [g.astype(F16), q[1].astype(F16)], [m.astype(F16), q[2].astype(F16)], [v.astype(F16), q[3]]
    yield "int", np.arange(4), np.arange(4), np.arange(4), np.arange(4)
    yield "mixed dtypes", p, g.astype(np.float64), m, v
    yield "big-endian", p.astype(">f4"), g.astype(">f4"), m.astype(">f4"), v.astype(">f4")
    yield "mixed dtypes across tensors", [p, q[0].astype(np.float64)], [g, q[1].astype(np.float64)], \
        [m, q[2].astype(np.float64)], [v, q[3].astype(np.float64)]
    yield "shape", p, g[:-1], m, v
    yield "state shape", p, g, m.reshape(3, 11), v
    yield "read-only param", read_only(p), g, m, v
    yield "read-only state", p, g, m, read_only(v)
    yield "non-contiguous param", np.repeat(p, 2)[::2], g, m, v
    yield "non-contiguous state", p, g, np.repeat(m, 2)[::2], v
    yield "overlap param/grad", p, p, m, v
    yield "overlap state/state", p, g, m, m
    base = np.arange(40, dtype=np.float32)
    yield "partial overlap", base[:33], g, base[5:38], v
    yield "list lengths", [p, q[0]], [g], [m, q[2]], [v, q[3]]
    yield "list vs array", [p], g, [m], [v]
    yield "not an array", [1.0] * 33, g, m, v
    yield "missing state", p, g, m, None
    yield "None param", [None], [g], [m], [v]
    yield "None grad", [p], [None], [m], [v]
    yield "list state", p, g, [0.0] * 33, v
    yield "list of floats params", [1.0, 2.0], [0.5, 0.5], [0.0, 0.0], [0.0, 0.0]
    yield "NumPy scalar param", np.abs(np.float32(1.0)), g[:1].reshape(()), m[:1].reshape(()), v[:1].reshape(())
    yield "read-only buffer state", p, g, m, memoryview(v.tobytes()).cast("f")


@pytest.mark.parametrize("label,params,grads,exp_avgs,exp_avg_sqs", list(bad_steps()),
                         ids=[b[0] for b in bad_steps()])
def test_declines_what_the_validator_rejects_and_errors_match(label, params, grads, exp_avgs, exp_avg_sqs):
    before = [np.array(x, copy=True) if isinstance(x, np.ndarray) else None for x in (params, exp_avgs, exp_avg_sqs)]
    kernel = _backends._kernels.adam
    assert kernel(params, grads, (exp_avgs, exp_avg_sqs, None), 0b011, PLAN.scalars, 0) is False
    for x, b in zip((params, exp_avgs, exp_avg_sqs), before):
        if b is not None:
            np.testing.assert_array_equal(x, b)  # nothing touched

    errors = []
    for backend in ("cpp", "numpy"):
        with pytest.raises((TypeError, ValueError)) as e:
            fo.adam_(params, grads, exp_avgs, exp_avg_sqs, step=1, backend=backend)
        errors.append((type(e.value), str(e.value)))
    assert errors[0] == errors[1]


def accepted_steps():
    """Inputs the validator accepts, the fast path too or not: all must step like the reference."""
    p, g, m, v = arrays(1000)
    yield "plain", p, g, m, v
    yield "lists", [p[:500].copy(), p[500:].copy()], [g[:500].copy(), g[500:].copy()], \
        [m[:500].copy(), m[500:].copy()], [v[:500].copy(), v[500:].copy()]
    yield "tuples", (p,), (g,), (m,), (v,)
    yield "read-only grad", p, read_only(g), m, v
    yield "non-contiguous grad", p, np.repeat(g, 2)[::2], m, v
    yield "2-D", p.reshape(10, 100), g.reshape(10, 100), m.reshape(10, 100), v.reshape(10, 100)
    yield "empty list", [], [], [], []
    yield "size 0", p[:0].copy(), g[:0].copy(), m[:0].copy(), v[:0].copy()
    yield "float64", *arrays(77, dtype=np.float64)
    yield "bfloat16", *arrays(77, dtype=BF16)
    yield "float16", *arrays(77, dtype=F16)
    yield "bfloat16, float32 states", *arrays(77, count=2, dtype=BF16), *arrays(77, count=2)
    yield "float32, bfloat16 grads", p, g.astype(BF16), m, v  # declined, then stepped by the validated path
    yield "float64, float16 grads and float32 states", p.astype(F64), g.astype(F16), m, v
    yield "buffer protocol grad", p, memoryview(g.copy()), m, v
    yield "writeable buffer state", p, g, memoryview(m.copy()), v  # declined, then stepped by the validated path


@pytest.mark.parametrize("label,params,grads,exp_avgs,exp_avg_sqs", list(accepted_steps()),
                         ids=[a[0] for a in accepted_steps()])
def test_accepted_steps_match_the_reference(label, params, grads, exp_avgs, exp_avg_sqs):
    def copied(x):
        if isinstance(x, (list, tuple)):
            return type(x)(copied(a) for a in x)
        if isinstance(x, memoryview):
            return memoryview(np.array(x))
        return x.copy() if isinstance(x, np.ndarray) else x

    results = []
    for backend in ("cpp", "numpy"):
        ops = [copied(x) for x in (params, grads, exp_avgs, exp_avg_sqs)]
        with np.errstate(invalid="ignore"):  # negative exp_avg_sqs: NaN, alike on both
            fo.adam_(*ops, step=1, backend=backend)
        results.append(ops)
    for a, b in zip(results[0], results[1]):
        for x, y in zip(a if isinstance(a, (list, tuple)) else [a], b if isinstance(b, (list, tuple)) else [b]):
            assert_bitwise_equal(np.asarray(x), np.asarray(y))


def test_every_rule_declines_a_bad_step():
    """Every rule's fast path checks every state slot the step uses."""
    for name, rule in RULES.items():
        plan = rule.first_plan(**bench.HYPER.get(name, {}))
        used = sum(1 << k for k, on in enumerate(plan.uses) if on)
        kernel = getattr(_backends._kernels, name)
        for bad in range(len(rule.states)):
            if not used >> bad & 1:
                continue
            p, g, *states = arrays(count=2 + len(rule.states))
            states[bad] = states[bad][:-1]
            assert kernel(p, g, tuple(states), used, plan.scalars, 0) is False, (name, rule.states[bad])
            p, g, *states = arrays(count=2 + len(rule.states))
            assert kernel(p, g, tuple(states), used, plan.scalars, 0) is True


def test_declines_scalars_the_compute_dtype_cannot_hold():
    """lr=1e38 is finite in float32, the step_size lr / (1 - 0.9) is not: declined untouched, for
    Python to name it; the same scalars in float64 are stepped."""
    plan = adam_plan(1, lr=1e38)
    kernel = _backends._kernels.adam
    p, g, m, v = arrays()
    before = [a.copy() for a in (p, m, v)]
    assert kernel(p, g, (m, v, None), 0b011, plan.scalars, 0) is False
    assert kernel(p, g, (m, v, None), 0b011, plan.scalars, 0, check_only=True) is False
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Invalid step_size"):
        fo.adam_(p, g, m, v, step=1, lr=1e38, backend="cpp")
    p, g, m, v = arrays(dtype=np.float64)
    assert kernel(p, g, (m, v, None), 0b011, plan.scalars, 0) is True


@pytest.mark.parametrize("label,params,grads,exp_avgs,exp_avg_sqs", list(bad_steps()), ids=[b[0] for b in bad_steps()])
def test_check_only_says_what_a_step_would_do_and_touches_nothing(label, params, grads, exp_avgs, exp_avg_sqs):
    """What a step of several calls (param groups) asks of each call before running any."""
    kernel = _backends._kernels.adam
    assert kernel(params, grads, (exp_avgs, exp_avg_sqs, None), 0b011, PLAN.scalars, 0, check_only=True) is False
    p, g, m, v = arrays()
    before = [a.copy() for a in (p, m, v)]
    assert kernel(p, g, (m, v, None), 0b011, PLAN.scalars, 0, check_only=True) is True
    for a, b in zip((p, m, v), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [33, 1 << 15], ids=["small", "GIL released"])
@pytest.mark.parametrize("backend", fo.available_backends())
def test_a_step_records_itself_only_once_taken(n, backend):
    """``record`` (the NumPy layer's step counts) is set once the step is taken, in every dict, as
    dict.update sets it (a State entry counts no edit); a step declined, checked or refused records nothing."""
    state = State({i: {"step": 1} for i in range(2)})
    entries, edits = [state[0], state[1], {"step": 1}], state.edits
    p, g, m, v = arrays(n)
    v = np.abs(v)
    _backends.step(backend, RULES["adam"], PLAN, [p], [g], ([m], [v], None), record=(entries, "step", 2))
    assert [e["step"] for e in entries] == [2] * 3 and state.edits == edits
    before = [a.copy() for a in (p, m, v)]
    kernel = getattr(_backends._kernels, "adam")
    scalars, bits = PLAN.scalars, _backends._bits(PLAN.flags)
    assert not kernel([p], [g[:-1]], ([m], [v], None), 3, scalars, bits, False, False, None, None, (entries, "step", 3))
    assert kernel([p], [g], ([m], [v], None), 3, scalars, bits, True, False, None, None, (entries, "step", 3))
    with pytest.raises(ValueError):
        kernel([p], [g], ([m], [v], None), 3, scalars, bits, False, False, None, None, (entries, "step"))
    with pytest.raises(ValueError):
        kernel([p], [g], ([m], [v], None), 3, scalars, bits, False, False, None, None, ([1], "step", 3))
    assert [e["step"] for e in entries] == [2] * 3
    for a, b in zip((p, m, v), before):
        assert_bitwise_equal(a, b, "operand")
