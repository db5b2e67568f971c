"""Stateful NumPy optimizers: the same bits as the functional calls, param groups, state_dict."""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import assert_bitwise_equal

# (class, constructor kwargs, functional, state names in functional argument order, takes step)
OPTIMIZERS = [
    (fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), fo.sgd_, ["momentum_buffer"], True),
    (fo.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5), fo.adagrad_, ["sum"], True),
    (fo.RMSprop, dict(lr=0.01, momentum=0.5, centered=True), fo.rmsprop_,
     ["square_avg", "momentum_buffer", "grad_avg"], False),
    (fo.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1), fo.adam_, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
     True),
    (fo.AdamW, dict(lr=0.01, amsgrad=True), fo.adamw_, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], True),
    (fo.Adamax, dict(lr=0.01, weight_decay=0.1), fo.adamax_, ["exp_avg", "exp_inf"], True),
    (fo.Adadelta, dict(lr=0.5, weight_decay=0.1), fo.adadelta_, ["square_avg", "acc_delta"], False),
    (fo.RAdam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), fo.radam_, ["exp_avg", "exp_avg_sq"],
     True),
]
IDS = [o[0].__name__ for o in OPTIMIZERS]


def make_params(seed=0, shapes=((5, 7), (13,), (1,))):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def grads_for(params, step):
    return [np.sin(p * step + 1).astype(p.dtype) for p in params]


def initial_state(name, kwargs, like):
    fill = kwargs.get("initial_accumulator_value", 0.0) if name == "sum" else 0.0
    return np.full_like(like, fill)


@pytest.mark.parametrize("cls,kwargs,functional,state_names,takes_step", OPTIMIZERS, ids=IDS)
def test_stateful_equals_functional(cls, kwargs, functional, state_names, takes_step):
    params = make_params()
    expected = [p.copy() for p in params]
    hyper = {k: v for k, v in kwargs.items() if k != "initial_accumulator_value"}
    states = [[initial_state(n, kwargs, p) for p in expected] for n in state_names]
    opt = cls(params, **kwargs)
    for step in range(1, 6):
        opt.step(grads_for(params, step))
        extra = {"step": step} if takes_step else {}
        by_name = dict(zip(state_names, states))
        if issubclass(cls, fo.Adam):
            functional(expected, grads_for(expected, step), by_name["exp_avg"], by_name["exp_avg_sq"],
                       max_exp_avg_sqs=by_name["max_exp_avg_sq"], **hyper, **extra)
        elif cls is fo.RMSprop:
            functional(expected, grads_for(expected, step), by_name["square_avg"],
                       momentum_buffers=by_name["momentum_buffer"], grad_avgs=by_name["grad_avg"], **hyper)
        else:
            functional(expected, grads_for(expected, step), *states, **hyper, **extra)
    for p, e in zip(params, expected):
        assert_bitwise_equal(p, e, cls.__name__)
    for i, p in enumerate(params):
        assert opt.state[i]["step"] == 5
        for name, arrays in zip(state_names, states):
            assert_bitwise_equal(opt.state[i][name], arrays[i], f"{cls.__name__} {name}")


@pytest.mark.parametrize("cls,kwargs,functional,state_names,takes_step", OPTIMIZERS, ids=IDS)
def test_state_dict_round_trip_continues_bitwise(cls, kwargs, functional, state_names, takes_step):
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
