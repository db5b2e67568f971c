"""The NumPy optimizers' ready step (``optim._Ready``): the usual step after the first is taken from
what the last one held, without per-param Python work. Whatever changes in between (hyperparameters,
a schedule, a state buffer, the whole state, a step count, the params, the layer's options), the
step must be the one a fresh optimizer takes from the same params, grads and state, bit for bit."""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import assert_bitwise_equal
from fusedoptim import optim

SIZES = (5, 17, 64)


def arrays(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for n in SIZES]


def ready_adam(**hyper):
    """An Adam with its step made ready (two steps taken), and the grads of its next step."""
    opt = fo.Adam(arrays(0), **hyper)
    opt.step(arrays(1))
    opt.step(arrays(2))
    assert isinstance(opt.__dict__.get("_ready"), optim._Ready)
    return opt, arrays(3)


def fresh_twin(opt):
    """An optimizer that has never stepped ready, with ``opt``'s params (copies), hyperparameters and state."""
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [p.copy() for p in g["params"]]}
              for g in opt.param_groups]
    twin = type(opt)(groups)
    twin.load_state_dict(opt.state_dict())
    return twin


def assert_steps_as_fresh(opt, grads):
    twin = fresh_twin(opt)
    assert opt.step(grads) == twin.step(grads)
    for p, q in zip(opt._params(), twin._params(), strict=True):
        assert_bitwise_equal(p, q, "param")
    assert opt.state.keys() == twin.state.keys()
    for i in opt.state:
        assert opt.state[i].keys() == twin.state[i].keys()
        for name, value in opt.state[i].items():
            if name == "step":
                assert type(value) is int and value == twin.state[i][name]
            else:
                assert_bitwise_equal(value, twin.state[i][name], name)


def taken_ready(opt, monkeypatch):
    """Makes ``opt`` record whether its next steps go through the full step (``_take_step``)."""
    full = []
    original = opt._take_step
    monkeypatch.setattr(opt, "_take_step", lambda *a, **k: full.append(1) or original(*a, **k))
    return full


def test_the_usual_step_is_taken_ready_and_as_fresh(monkeypatch):
    opt, grads = ready_adam(weight_decay=0.1, amsgrad=True)
    full = taken_ready(opt, monkeypatch)
    for _ in range(3):
        assert_steps_as_fresh(opt, grads)
    assert full == []  # the guard: the steps above were taken ready
    assert [opt.state[i]["step"] for i in range(3)] == [5] * 3


def test_changed_hyperparameters_are_seen():
    opt, grads = ready_adam()
    opt.param_groups[0]["lr"] = 0.5
    opt.param_groups[0]["betas"] = (0.5, 0.6)
    assert_steps_as_fresh(opt, grads)


def test_values_changed_in_place_or_of_another_type_are_seen():
    opt, grads = ready_adam(lr=1.0, betas=[0.9, 0.999])
    opt.param_groups[0]["betas"][0] = 0.5  # a list changed in place
    assert_steps_as_fresh(opt, grads)
    before = [p.copy() for p in opt._params()]
    opt.param_groups[0]["lr"] = True  # equal to 1.0, and no learning rate
    with pytest.raises(TypeError, match="Invalid lr"):
        opt.step(grads)
    for p, q in zip(opt._params(), before):
        assert_bitwise_equal(p, q, "param")


@pytest.mark.parametrize("cls", [fo.RMSprop, fo.Lion])
def test_a_rule_without_a_count_sees_changed_hyperparameters(cls):
    """(Its plan is the same from step to step while the group's values are: a change must be seen.)"""
    opt = cls(arrays(0), lr=0.01)
    for k in (1, 2, 3):
        opt.step(arrays(k))
    opt.param_groups[0]["lr"] = 0.5
    assert_steps_as_fresh(opt, arrays(4))


def test_bad_hyperparameters_raise_and_change_nothing():
    opt, grads = ready_adam()
    before = [p.copy() for p in opt._params()]
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate|Invalid lr"):
        opt.step(grads)
    for p, q in zip(opt._params(), before):
        assert_bitwise_equal(p, q, "param")
    assert [opt.state[i]["step"] for i in range(3)] == [2] * 3


def test_a_schedule_is_read_at_each_step():
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.1 / step

    opt = fo.Adam(arrays(0), lr=schedule)
    for k in range(1, 5):
        opt.step(arrays(k))
    assert seen == [1, 1, 2, 3, 4]  # once when the group was added, then once per step, at its count
    assert_steps_as_fresh(opt, arrays(9))


def test_a_replaced_state_buffer_is_stepped():
    opt, grads = ready_adam()
    mine = np.full(17, 0.25, np.float32)
    old = opt.state[1]["exp_avg"]
    kept = old.copy()
    opt.state[1]["exp_avg"] = mine
    assert_steps_as_fresh(opt, grads)
    assert opt.state[1]["exp_avg"] is mine and not np.all(mine == 0.25)
    assert_bitwise_equal(old, kept, "the replaced buffer")  # no longer stepped


@pytest.mark.parametrize("how", ["set", "update", "setdefault of a new entry", "deleted", "popped", "cleared"])
def test_any_edit_of_the_state_is_seen(how):
    opt, grads = ready_adam()
    if how == "set":
        opt.state[0]["step"] = 10  # bias correction at step 11
    elif how == "update":
        opt.state[2].update(step=7, exp_avg_sq=np.ones(64, np.float32))
    elif how == "setdefault of a new entry":
        opt.state[0].setdefault("max_exp_avg_sq", np.zeros(5, np.float32))  # kept, unused
    elif how == "deleted":
        del opt.state[1]  # param 1 starts afresh: a bucket of its own
    elif how == "popped":
        opt.state.pop(0)
    else:
        opt.state[2].clear()  # an entry without a count or buffers: a param's first step
    assert_steps_as_fresh(opt, grads)


def test_in_place_changes_of_the_state_dicts_are_counted():
    """Every way to change an entry or the state counts as an edit (a step made ready before is not taken)."""
    opt, _ = ready_adam()
    entry = opt.state[0]
    for edit in [lambda: entry.__setitem__("x", 1), lambda: entry.__delitem__("x"), lambda: entry.update(x=1),
                 lambda: entry.pop("x"), lambda: entry.setdefault("x", 2), lambda: entry.popitem(),
                 lambda: entry.__ior__({"x": 3}), lambda: opt.state.__setitem__(9, {}), lambda: opt.state.pop(9)]:
        before = opt.state.edits
        edit()
        assert opt.state.edits != before


@pytest.mark.parametrize("how", ["plain dict", "load_state_dict", "emptied"])
def test_a_replaced_state_is_seen(how):
    opt, grads = ready_adam()
    other = fresh_twin(opt)
    other.step(arrays(7))  # a state one step ahead, with buffers of its own
    if how == "plain dict":
        opt.state = {i: dict(entry) for i, entry in other.state.items()}
    elif how == "load_state_dict":
        opt.load_state_dict(other.state_dict())
    else:
        opt.state = {}
    assert_steps_as_fresh(opt, grads)


def test_replaced_params_are_stepped():
    opt, grads = ready_adam()
    group = opt.param_groups[0]
    new, old = arrays(5)[1], group["params"][1]
    kept = old.copy()
    group["params"][1] = new  # in place, in the same list
    assert_steps_as_fresh(opt, grads)
    assert_bitwise_equal(old, kept, "the replaced param")
    group["params"] = arrays(6)  # a new list
    assert_steps_as_fresh(opt, grads)


def test_a_new_group_and_missing_grads_are_stepped():
    opt, grads = ready_adam()
    assert_steps_as_fresh(opt, [grads[0], None, grads[2]])
    opt.add_param_group({"params": [np.ones(8, np.float32)], "lr": 0.3})
    assert_steps_as_fresh(opt, grads + [np.ones(8, np.float32)])


def test_switching_amsgrad_creates_its_state():
    opt, grads = ready_adam()
    opt.param_groups[0]["amsgrad"] = True
    assert_steps_as_fresh(opt, grads)
    assert all("max_exp_avg_sq" in opt.state[i] for i in range(3))
    opt.param_groups[0]["amsgrad"] = False
    assert_steps_as_fresh(opt, grads)


def test_changed_options_are_seen():
    opt, grads = ready_adam()
    opt.skip_nonfinite = True
    bad = [g.copy() for g in grads]
    bad[1][3] = np.inf
    before = [p.copy() for p in opt._params()]
    assert opt.step(bad) is False
    for p, q in zip(opt._params(), before):
        assert_bitwise_equal(p, q, "param")
    opt.skip_nonfinite = False
    opt.backend = "numpy"
    assert_steps_as_fresh(opt, grads)


def test_loss_scaling_is_not_taken_ready():
    opt, grads = ready_adam()
    twin = fresh_twin(opt)
    opt.step(grads, grad_scale=4.0)
    twin.step(grads, grad_scale=4.0)
    for p, q in zip(opt._params(), twin._params()):
        assert_bitwise_equal(p, q, "param")
    assert opt.step(grads, found_inf=True) is False and opt.state[0]["step"] == 3


@pytest.mark.parametrize("bad", ["shape", "dtype", "count", "object"])
def test_bad_grads_raise_naming_them_and_change_nothing(bad):
    opt, grads = ready_adam()
    before = [p.copy() for p in opt._params()]
    states = [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state[i].items()} for i in range(3)]
    if bad == "shape":
        grads[2] = np.ones(63, np.float32)
    elif bad == "dtype":
        grads[2] = np.ones(64, np.int32)
    elif bad == "object":
        grads[2] = "not an array"
    else:
        grads = grads[:2]
    with pytest.raises((TypeError, ValueError), match=r"grads\[2\]|grads has 2 entries"):
        opt.step(grads)
    for p, q in zip(opt._params(), before):
        assert_bitwise_equal(p, q, "param")
    for i in range(3):
        assert opt.state[i]["step"] == 2
        for name in ("exp_avg", "exp_avg_sq"):
            assert_bitwise_equal(opt.state[i][name], states[i][name], name)


def test_a_copy_steps_its_own_arrays():
    import copy
    import pickle

    opt, grads = ready_adam()
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        kept = [p.copy() for p in opt._params()]
        twin.step(grads)
        for p, q in zip(opt._params(), kept):
            assert_bitwise_equal(p, q, "the original's param")
        assert_steps_as_fresh(twin, grads)


@pytest.mark.parametrize("option, error", [
    (dict(seed=-1), ValueError), (dict(seed=2**32), ValueError), (dict(seed=True), TypeError),
    (dict(seed=1.0), TypeError), (dict(rounding="Nearest"), ValueError), (dict(rounding=None), ValueError),
    (dict(grad_scale=float("nan")), ValueError), (dict(grad_scale=0.0), ValueError)])
def test_the_functionals_plain_call_still_checks_its_options(option, error):
    """``functional._precision`` takes the usual call (nearest rounding, no modes, no scale, an int seed)
    without its checks: anything else is checked as before, and raises before a param changes."""
    p, g = arrays(0)[0], arrays(1)[0]
    m, v = np.zeros_like(p), np.zeros_like(p)
    kept = p.copy()
    with pytest.raises(error, match="Invalid (seed|rounding|grad_scale)"):
        fo.adam_(p, g, m, v, step=1, **option)
    assert_bitwise_equal(p, kept, "param")
    fo.adam_(p, g, m, v, step=1, seed=2**32 - 1)  # the largest seed is plain
