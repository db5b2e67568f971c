"""Stateful NumPy optimizers: the same bits as the functional calls, param groups, state_dict."""

import re

import numpy as np
import pytest

import fusedoptim as fo
from conftest import EVERY_STATE_KWARGS as KWARGS, assert_bitwise_equal
from fusedoptim._rules import OPTIMIZERS as SPECS

# (class, constructor kwargs, functional, spec)
OPTIMIZERS = [(getattr(fo, name), KWARGS[name], getattr(fo, spec.functional), spec) for name, spec in SPECS.items()]
IDS = [o[0].__name__ for o in OPTIMIZERS]


def test_every_optimizer_is_in_the_tables():
    assert set(KWARGS) == set(SPECS)


def make_params(seed=0, shapes=((5, 7), (13,), (1,))):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def grads_for(params, step):
    return [np.sin(p * step + 1).astype(p.dtype) for p in params]


def initial_state(state, kwargs, like):
    return np.full_like(like, kwargs.get(state.initial, 0.0) if state.initial else 0.0)


@pytest.mark.parametrize("cls,kwargs,functional,spec", OPTIMIZERS, ids=IDS)
def test_stateful_equals_functional(cls, kwargs, functional, spec):
    """The stateful class's steps are the functional's, bit for bit, states, step counts and host state included."""
    rule = spec.rule
    params = make_params()
    expected = [p.copy() for p in params]
    hyper = {k: v for k, v in kwargs.items() if k not in rule.initial.values()}
    states = [[initial_state(s, kwargs, p) for p in expected] for s in rule.states]
    host = dict(zip(rule.host_states, rule.host_start(kwargs)))
    opt = cls(params, **kwargs)
    for step in range(1, 6):
        opt.step(grads_for(params, step))
        counted = {"step": step} if rule.step else {}
        returned = functional(expected, grads_for(expected, step), *states, **hyper, **counted, **host)
        if host:
            host = dict(zip(host, returned if len(host) > 1 else [returned]))
    for p, e in zip(params, expected):
        assert_bitwise_equal(p, e, cls.__name__)
    used = rule.first_plan(**hyper).uses
    for i, p in enumerate(params):
        assert opt.state[i]["step"] == 5
        assert {k: opt.state[i][k] for k in host} == host
        for state, arrays, on in zip(rule.states, states, used):
            if on:
                assert_bitwise_equal(opt.state[i][state.name], arrays[i], f"{cls.__name__} {state.name}")


@pytest.mark.parametrize("cls,kwargs,functional,spec", OPTIMIZERS, ids=IDS)
def test_state_dict_round_trip_continues_bitwise(cls, kwargs, functional, spec):
    params = make_params()
    opt = cls(params, **kwargs)
    for step in range(1, 4):
        opt.step(grads_for(params, step))
    saved = opt.state_dict()
    resumed_params = [p.copy() for p in params]
    resumed = cls(resumed_params, **{**kwargs, "lr": 123.0})  # hyperparameters come from the checkpoint
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == kwargs["lr"]
    for step in range(4, 7):
        opt.step(grads_for(params, step))
        resumed.step(grads_for(resumed_params, step))
    for p, r in zip(params, resumed_params):
        assert_bitwise_equal(r, p, cls.__name__)


def test_state_dict_layout_and_copies():
    params = make_params()
    opt = fo.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.01)
    opt.step(grads_for(params, 1))
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["lr"] == 0.01
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][0]["step"] == 1
    sd["state"][0]["exp_avg"][...] = 42  # a copy: the optimizer's state is untouched
    assert not np.any(opt.state[0]["exp_avg"] == 42)


def test_param_groups_use_their_own_hyperparameters():
    params = make_params()
    expected = [p.copy() for p in params]
    opt = fo.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.5, "weight_decay": 0.1}], lr=0.1)
    opt.step(grads_for(params, 1))
    fo.sgd_(expected[:1], grads_for(expected[:1], 1), lr=0.1)
    fo.sgd_(expected[1:], grads_for(expected, 1)[1:], lr=0.5, weight_decay=0.1)
    for p, e in zip(params, expected):
        assert_bitwise_equal(p, e)


def test_none_grad_skips_param():
    params = make_params()
    before = params[1].copy()
    opt = fo.Adam(params, lr=0.1)
    grads = grads_for(params, 1)
    grads[1] = None
    opt.step(grads)
    assert_bitwise_equal(params[1], before)
    assert 1 not in opt.state and opt.state[0]["step"] == 1
    opt.step(grads_for(params, 2))  # param 1 now takes its first step while the others take their second
    assert opt.state[1]["step"] == 1 and opt.state[0]["step"] == 2


def test_mixed_dtypes_and_aligned_state():
    params = [np.ones(100, np.float32), np.ones(37, np.float64)]
    opt = fo.Adam(params, lr=0.1)
    opt.step([np.ones(100, np.float32), np.ones(37, np.float64)])
    for i, p in enumerate(params):
        assert np.all(p < 1)
        for name in ("exp_avg", "exp_avg_sq"):
            buf = opt.state[i][name]
            assert buf.dtype == p.dtype and buf.ctypes.data % 64 == 0


def test_adagrad_initial_accumulator_value():
    p = np.zeros(4, np.float32)
    opt = fo.Adagrad([p], lr=1.0, initial_accumulator_value=3.0, eps=0.0)
    opt.step([np.ones(4, np.float32)])
    assert np.all(opt.state[0]["sum"] == 4.0)
    assert np.all(p == -0.5)  # 0 - 1 * (1 / (sqrt(4) + 0)): every op exact


@pytest.mark.parametrize("bad,error,message", [
    (lambda p: fo.Adam([]), ValueError, "empty parameter list"),
    (lambda p: fo.Adam(p, lr=-1.0), ValueError, "Invalid lr"),
    (lambda p: fo.Adam([{"params": p}, {"params": p[:1]}]), ValueError, "more than one parameter group"),
    (lambda p: fo.Adam([{"params": p, "lrr": 0.1}]), ValueError, "unknown hyperparameters"),
    (lambda p: fo.Adagrad(p, initial_accumulator_value=-1.0), ValueError, "initial_accumulator_value"),
    (lambda p: fo.SGD(p, momentum=0.9).step([np.ones(3, np.float32)]), ValueError, "grads has 1 entries"),
    (lambda p: fo.SGD(p, nesterov=True), ValueError, "Invalid nesterov"),
])
def test_bad_construction_and_steps(bad, error, message):
    params = make_params()
    before = [p.copy() for p in params]
    with pytest.raises(error, match=message):
        bad(params)
    for p, b in zip(params, before):
        assert_bitwise_equal(p, b)


BACKENDS = fo.available_backends()


def two_group_adam(backend, dtypes=(np.float32, np.float32, np.float32)):
    """An Adam over two groups: params 0, 1 in group 0 and param 2 in group 1 (its own lr)."""
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(n).astype(d) for n, d in zip((5, 13, 7), dtypes)]
    return params, fo.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1, backend=backend)


def good_grads(params):
    return [np.full_like(p, 0.25) for p in params]


def everything(params, opt):
    """The params, every state entry and step count, as bytes and numbers."""
    state = {i: {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
             for i, s in opt.state.items()}
    return [p.tobytes() for p in params], state


def spoilers():
    """(label, how to spoil the step of two_group_adam, error, the message or all its parts): each
    fails in group 1, after group 0 would have been stepped."""
    def grad(i, value):
        def spoil(params, opt, grads):
            grads[i] = value(params, grads)
        return spoil

    def group_lr(value):
        def spoil(params, opt, grads):
            opt.param_groups[1]["lr"] = value
        return spoil

    def read_only(params, opt, grads):
        params[2].flags.writeable = False

    return [
        ("grad shape", grad(2, lambda p, g: g[2][:-1].copy()), ValueError,
         "grads[2] (param 0 of group 1) has shape (6,) but params[2] (param 0 of group 1) has shape (7,)"),
        ("grad dtype", grad(2, lambda p, g: g[2].astype(np.float64)), TypeError, "grads[2] (param 0 of group 1) is float64"),
        ("grad is a list", grad(2, lambda p, g: [1.0] * 7), TypeError, "grads[2] (param 0 of group 1) is float64"),
        ("grad is another group's param", grad(2, lambda p, g: p[1][:7]), ValueError,
         ("params[1] (param 1 of group 0)", "grads[2] (param 0 of group 1)", "overlap in memory")),
        ("later group's lr", group_lr(-1.0), ValueError, "Invalid lr"),
        ("later group's lr overflows float32", group_lr(1e300), ValueError,
         ("Invalid step_size: ", "is not finite in float32")),
        ("param made read-only", read_only, ValueError, "params[2] (param 0 of group 1) is read-only"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first", [True, False], ids=["first step", "later step"])
@pytest.mark.parametrize("label,spoil,error,message", spoilers(), ids=[s[0] for s in spoilers()])
def test_a_failing_group_leaves_every_group_untouched(backend, first, label, spoil, error, message):
    """Group 0 is fine, group 1 is not: nothing is stepped, no state is made, no count moves."""
    params, opt = two_group_adam(backend)
    if not first:
        opt.step(good_grads(params))
    grads = good_grads(params)
    grads[0] = None  # a skipped param in the failing step: its (missing) state must stay missing too
    spoil(params, opt, grads)
    before = everything(params, opt)
    with pytest.raises(error) as raised:
        opt.step(grads)
    for part in (message,) if isinstance(message, str) else message:
        assert part in str(raised.value)
    assert everything(params, opt) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_dtype_bucket_leaves_the_others_untouched(backend):
    params, opt = two_group_adam(backend, dtypes=(np.float32, np.float64, np.float32))
    grads = good_grads(params)
    grads[1] = grads[1][:3].copy()  # the float64 bucket of group 0
    before = everything(params, opt)
    with pytest.raises(ValueError, match=re.escape("grads[1] (param 1 of group 0) has shape (3,)")):
        opt.step(grads)
    assert everything(params, opt) == before
    opt.step(good_grads(params))
    assert all(opt.state[i]["step"] == 1 for i in range(3))


def test_errors_name_the_param_as_step_takes_it():
    """One group: grads[i] is what the user passed to step() as grads[i]."""
    params = make_params()
    opt = fo.Adam(params, lr=0.1)
    grads = grads_for(params, 1)
    grads[2] = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match=re.escape("grads[2] has shape (2,) but params[2] has shape (1,)")):
        opt.step(grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_grad_for_two_params_and_groups(backend):
    """torch.optim takes one grad for several params; so do the stateful optimizers, across groups too."""
    params, opt = two_group_adam(backend)
    shared = np.full(7, 0.25, np.float32)
    expected_params, expected = two_group_adam("numpy")
    expected.step([np.full(5, 0.25, np.float32), np.full(13, 0.25, np.float32), shared.copy()])
    opt.step([shared[:5], np.full(13, 0.25, np.float32), shared])
    for p, e in zip(params, expected_params):
        assert_bitwise_equal(p, e)


def unsteppable():
    """(label, param, error, message): params no step could update."""
    a = np.ones(6, np.float32)
    read_only = a.copy()
    read_only.flags.writeable = False
    return [
        ("read-only", read_only, ValueError, "params[1] is read-only"),
        ("int32", np.ones(3, np.int32), TypeError, "params[1] has dtype int32"),
        ("strided", a[::2], ValueError, "params[1] is not dense in memory (a strided or reversed view)"),
        ("reversed", a[::-1], ValueError, "params[1] is not dense in memory (a strided or reversed view)"),
        ("NumPy scalar", np.float32(1.0), TypeError,
         "params[1] must be a writeable NumPy array (it is updated in place), got numpy.float32"),
        ("float", 1.0, TypeError, "params[1] must be a writeable NumPy array (it is updated in place), got float"),
        ("view of params[0]", "overlap", ValueError, "params[0] and params[1] overlap in memory"),
    ]


@pytest.mark.parametrize("label,param,error,message", unsteppable(), ids=[u[0] for u in unsteppable()])
def test_params_no_step_could_update_are_rejected_when_added(label, param, error, message):
    first = np.zeros(6, np.float32)
    param = first[2:] if isinstance(param, str) else param
    with pytest.raises(error, match=re.escape(message)):
        fo.SGD([first, param], lr=0.1)
    opt = fo.SGD([first], lr=0.1)
    with pytest.raises(error, match=re.escape(message)):
        opt.add_param_group({"params": [param]})
    assert len(opt.param_groups) == 1


def test_a_lone_numpy_scalar_is_named():
    with pytest.raises(TypeError, match=re.escape("params[0] must be a writeable NumPy array")):
        fo.Adam(np.abs(np.array(1.0, np.float32)))


def test_hyperparameters_the_params_dtype_cannot_hold_are_rejected_when_added():
    with pytest.raises(ValueError, match=re.escape("Invalid lr: 1e+300 is not finite in float32")):
        fo.SGD([np.zeros(3, np.float32)], lr=1e300)
    fo.SGD([np.zeros(3, np.float64)], lr=1e300)  # fits in float64


@pytest.mark.parametrize("value,error,message", [
    (-1.0, ValueError, "Invalid initial_accumulator_value: -1.0 (must be >= 0.0)"),
    (float("inf"), ValueError, "Invalid initial_accumulator_value: inf (must be finite)"),
    (1e39, ValueError, "Invalid initial_accumulator_value: 1e+39 is not finite in float32"),
    ("1", TypeError, "Invalid initial_accumulator_value: expected a real number, got str"),
])
def test_a_state_start_value_is_checked_in_every_group(value, error, message):
    """A sum starting at Inf (or NaN from a negative one) would stall or poison every step."""
    p, q = np.zeros(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(error, match=re.escape(message)):
        fo.Adagrad([p], initial_accumulator_value=value)
    with pytest.raises(error, match=re.escape(message)):
        fo.Adagrad([{"params": [p]}, {"params": [q], "initial_accumulator_value": value}])
