"""The NumPy optimizers on their own: LR schedules, skipping steps with inf/NaN grads, Fortran-ordered
params, a repr that says what the optimizer is, and construction errors for what could never step."""

import pickle
import re

import numpy as np
import pytest

import fusedoptim as fo
from conftest import assert_bitwise_equal
from fusedoptim._rules import OPTIMIZERS as SPECS

BACKENDS = fo.available_backends()
# Every optimizer, with hyperparameters that use every state it has (as test_optim's table).
KWARGS = {"SGD": dict(lr=0.1, momentum=0.9, nesterov=True), "Adagrad": dict(lr=0.1, initial_accumulator_value=0.5),
          "RMSprop": dict(lr=0.01, momentum=0.5, centered=True), "Adam": dict(lr=0.01, amsgrad=True),
          "AdamW": dict(lr=0.01), "Adamax": dict(lr=0.01), "Adadelta": dict(lr=0.5), "RAdam": dict(lr=0.01),
          "NAdam": dict(lr=0.01), "Lion": dict(lr=0.01, weight_decay=0.1), "Lamb": dict(lr=0.01, weight_decay=0.1),
          "ASGD": dict(lr=0.01, lambd=0.01, t0=2.0), "Rprop": dict(lr=0.01, etas=(0.4, 1.3))}


def test_every_optimizer_is_in_the_table():
    assert set(KWARGS) == set(SPECS)


def params_and_grads(seed=0, shapes=((6, 5), (7,)), steps=4):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return params, grads


def everything(params, opt):
    """The params, every state entry and step count, as bytes and numbers."""
    state = {i: {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
             for i, s in opt.state.items()}
    return [p.tobytes() for p in params], state


# --- LR schedules: lr may be a function of the step number ---

def warmup_then_decay(step):
    return 0.1 * min(1.0, step / 3) / (1 + 0.1 * step)


@pytest.mark.parametrize("name", SPECS)
def test_a_schedule_is_the_lr_set_by_hand_before_each_step(name):
    cls = getattr(fo, name)
    kwargs = {k: v for k, v in KWARGS[name].items() if k != "lr"}
    params, grads = params_and_grads()
    scheduled, by_hand = [p.copy() for p in params], [p.copy() for p in params]
    opt = cls(scheduled, lr=warmup_then_decay, **kwargs)
    hand = cls(by_hand, lr=1.0, **kwargs)
    for step, g in enumerate(grads, 1):
        hand.param_groups[0]["lr"] = warmup_then_decay(step)
        opt.step(g)
        hand.step(g)
    for s, h in zip(scheduled, by_hand):
        assert_bitwise_equal(s, h, name)


def test_each_param_gets_the_lr_of_its_own_step():
    """A param whose grad was None on a step lags by one: its schedule is at its own step count."""
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.1 / step

    a, b = np.ones(3, np.float32), np.ones(3, np.float32)
    opt = fo.SGD([a, b], lr=schedule)
    assert seen == [1]  # checked once when the group is added
    g = np.ones(3, np.float32)
    opt.step([g, g])
    opt.step([g, None])
    opt.step([g, g])
    assert opt.state[0]["step"] == 3 and opt.state[1]["step"] == 2
    assert sorted(seen[1:]) == [1, 2, 2, 3]  # one call per bucket: step 1 (both), 2 (a), then 3 (a) and 2 (b)
    expected = np.ones(3, np.float32)
    for lr in (0.1, 0.05):
        fo.sgd_(expected, g, lr=lr)
    assert_bitwise_equal(b, expected, "the lagging param")


def test_a_schedule_resumes_from_a_state_dict():
    params, grads = params_and_grads()
    straight = [p.copy() for p in params]
    opt = fo.Adam(straight, lr=warmup_then_decay)
    for g in grads:
        opt.step(g)
    resumed = [p.copy() for p in params]
    first = fo.Adam(resumed, lr=warmup_then_decay)
    for g in grads[:2]:
        first.step(g)
    saved = pickle.loads(pickle.dumps(first.state_dict()))  # a module-level function pickles
    second = fo.Adam(resumed, lr=warmup_then_decay)
    second.load_state_dict(saved)
    for g in grads[2:]:
        second.step(g)
    for s, r in zip(straight, resumed):
        assert_bitwise_equal(s, r, "resumed")


def test_a_bad_value_from_a_schedule_changes_nothing():
    params, grads = params_and_grads()
    opt = fo.Adam(params, lr=lambda step: 0.1 if step < 2 else -1.0)
    opt.step(grads[0])
    before = everything(params, opt)
    with pytest.raises(ValueError, match=re.escape("Invalid lr: -1.0 (must be >= 0.0)")):
        opt.step(grads[1])
    assert everything(params, opt) == before


# --- skip_nonfinite: GradScaler's rule ---

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_a_step_with_an_inf_or_nan_grad_is_skipped_whole(backend, special):
    """One bad element in a later group: no param, state or step count changes, and step() says so."""
    params, grads = params_and_grads()
    params.append(np.zeros(4, np.float64))
    opt = fo.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1, backend=backend,
                  skip_nonfinite=True)
    assert opt.step(grads[0] + [np.ones(4)]) is True
    before = everything(params, opt)
    bad = np.ones(4)
    bad[3] = special
    assert opt.step(grads[1] + [bad]) is False
    assert everything(params, opt) == before
    assert opt.step(grads[1] + [np.ones(4)]) is True and opt.state[2]["step"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_skip_nonfinite_nan_propagates_as_before(backend):
    p = np.zeros(3, np.float32)
    opt = fo.SGD([p], lr=0.1, backend=backend)
    assert opt.step([np.array([np.nan, 1, 1], np.float32)]) is True
    assert np.isnan(p[0]) and p[1] == np.float32(-0.1)


def test_float64_grads_whose_squares_overflow_are_still_finite():
    """1e200 squared overflows the sum of squares the native test reads; the step is not skipped."""
    p = np.zeros(2)
    opt = fo.SGD([p], lr=1e-200, skip_nonfinite=True)
    assert opt.step([np.array([1e200, -1e200])]) is True
    assert p.tolist() == [-1.0, 1.0]


def test_skipping_does_not_hide_bad_input():
    params, grads = params_and_grads()
    opt = fo.Adam(params, skip_nonfinite=True)
    grads[0][1] = np.full(3, np.nan, np.float32)
    with pytest.raises(ValueError, match=re.escape("grads[1] has shape (3,) but params[1] has shape (7,)")):
        opt.step(grads[0])


# --- Fortran-ordered params: stepped in memory order, as the torch layer steps transposed tensors ---

@pytest.mark.parametrize("name", SPECS)
def test_a_fortran_ordered_param_steps_as_its_c_ordered_transpose(name):
    cls = getattr(fo, name)
    params, grads = params_and_grads(shapes=((6, 5), (7,), (3, 4, 2)))
    fortran = [np.asfortranarray(p) for p in params]
    transposed = [p.T.copy() for p in params]  # the same memory order, C-contiguous, memory of its own
    opt_f, opt_t = cls(fortran, **KWARGS[name]), cls(transposed, **KWARGS[name])
    for g in grads:
        assert opt_f.step(g)
        opt_t.step([x.T for x in g])
    for f, t in zip(fortran, transposed):
        assert f.flags.f_contiguous
        assert_bitwise_equal(f.T, t, name)
    for i, entry in opt_f.state.items():
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                assert value.shape == params[i].shape and value.strides == fortran[i].strides, key
                assert_bitwise_equal(value.T, opt_t.state[i][key], f"{name} {key}")


def test_fortran_ordered_state_round_trips_through_a_state_dict():
    params, grads = params_and_grads()
    fortran = [np.asfortranarray(p) for p in params]
    straight = [p.copy(order="F") for p in fortran]
    opt = fo.Adam(straight, lr=0.1)
    for g in grads:
        opt.step(g)
    first = fo.Adam(fortran, lr=0.1)
    for g in grads[:2]:
        first.step(g)
    second = fo.Adam(fortran, lr=0.1)
    second.load_state_dict(first.state_dict())
    assert second.state[0]["exp_avg"].flags.f_contiguous
    for g in grads[2:]:
        second.step(g)
    for s, f in zip(straight, fortran):
        assert_bitwise_equal(s, f, "resumed")


def test_a_wrong_grad_of_a_fortran_param_is_named_with_the_shapes_shown():
    p = np.asfortranarray(np.zeros((3, 2), np.float32))
    opt = fo.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match=re.escape(
            "grads[0] (as the param's transpose, in its memory order) has shape (4, 3) but params[0] (as the "
            "param's transpose, in its memory order) has shape (2, 3)")):
        opt.step([np.zeros((3, 4), np.float32)])


# --- repr ---

def test_repr_says_what_the_optimizer_is():
    params, grads = params_and_grads()
    opt = fo.Adam([{"params": params[:1]}, {"params": params[1:] + [np.zeros(2)], "lr": 0.5}], lr=0.1,
                  backend="numpy", skip_nonfinite=True)
    opt.step([grads[0][0], None, np.zeros(2)])
    text = repr(opt)
    assert text.startswith("Adam(backend='numpy', skip_nonfinite=True\n")
    assert "\n  group 0: 1 param, 30 float32 elements, 1 step taken\n    lr=0.1, betas=(0.9, 0.999), " in text
    assert "\n  group 1: 2 params, 9 float32/float64 elements, 0 to 1 steps taken\n    lr=0.5, " in text
    assert text.endswith("decoupled_weight_decay=False)")
    assert "backend='auto: " in repr(fo.SGD(params))


# --- What could never be stepped is refused when the optimizer is made ---

@pytest.mark.parametrize("make, error, message", [
    (lambda p: fo.Adam(p, backend="fortran"), ValueError, "Invalid backend: 'fortran'"),
    (lambda p: fo.Adam({"params": p}), TypeError,
     "params must be an array, or a list of arrays or of param groups, got dict (a lone group goes in a list)"),
    (lambda p: fo.Adam(p, skip_nonfinite="yes"), TypeError, "Invalid skip_nonfinite: expected a bool, got str"),
])
def test_what_could_never_step_is_refused_when_made(make, error, message):
    params, _ = params_and_grads()
    with pytest.raises(error, match=re.escape(message)):
        make(params)
