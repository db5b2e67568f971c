"""fusedoptim.torch's planned step (``Optimizer._planned_step``, the extension's ``Plan``): from
the third step on, one native call checks that nothing but the grads' values changed since the
groups were prepared, reads every grad and steps every group. Each test changes one thing the plan
must notice and checks the step against the one a fresh optimizer takes from the same state, bit
for bit; and that the plan took the steps it should (a plan that never steps passes the rest)."""

import copy
import pickle

import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedoptim.torch")
import fusedoptim  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook  # noqa: E402
from fusedoptim import _native  # noqa: E402
from test_prepared import assert_same, fresh_step, make, set_grads, snapshot, step_and_compare, warm  # noqa: E402

pytestmark = pytest.mark.skipif(_native.module() is None, reason="the plan is the C++ extension's")


_outcomes = {}  # id(optimizer) -> whether its last step was planned


@pytest.fixture(autouse=True)
def record_outcomes(monkeypatch):
    planned_step = ft.Optimizer._planned_step

    def recorded(self):
        _outcomes[id(self)] = outcome = planned_step(self)
        return outcome

    monkeypatch.setattr(ft.Optimizer, "_planned_step", recorded)
    yield
    _outcomes.clear()


def planned(opt):
    """Whether the optimizer's last step was taken by its plan."""
    return _outcomes.get(id(opt), False)


def test_the_third_step_on_is_planned():
    params, opt = make()
    for k in range(4):
        step_and_compare(params, opt, seed=k)
        assert planned(opt) == (k >= 2)


@pytest.mark.parametrize("cls, hyper", [
    (ft.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (ft.AdamW, dict(lr=0.01)),
    (ft.SGD, dict(lr=0.1)),
    (ft.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (ft.Adagrad, dict(lr=0.1, lr_decay=0.01)),
    (ft.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (ft.Adamax, dict(lr=0.01)),
    (ft.RAdam, dict(lr=0.01)),
    (ft.Adadelta, dict(lr=0.5)),
    (ft.Rprop, dict(lr=0.01)),
    (ft.Lion, dict(lr=0.01)),
    (ft.Lamb, dict(lr=0.01, weight_decay=0.01)),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_every_rule_steps_as_a_fresh_optimizer(cls, hyper):
    params, opt = make(cls=cls, **hyper)
    warm(params, opt)
    for seed in range(3):
        step_and_compare(params, opt, seed=seed)
        assert planned(opt)


def test_groups_and_their_hyperparameters_changed_between_steps():
    params, opt = make(n=4, lr=0.01)
    opt.param_groups[0]["params"] = params[:2]
    opt.add_param_group({"params": params[2:], "lr": 0.1, "weight_decay": 0.1})
    warm(params, opt)
    step_and_compare(params, opt)
    assert planned(opt)
    opt.param_groups[1]["lr"] = 0.5  # read each step: still the plan
    opt.param_groups[0]["betas"] = (0.8, 0.99)
    step_and_compare(params, opt, seed=8)
    assert planned(opt)
    opt.param_groups[1]["lr"] = lambda step: 0.01 * step  # a schedule: its value at each param's step
    step_and_compare(params, opt, seed=9)
    assert planned(opt)


@pytest.mark.parametrize("cls", [ft.RMSprop, ft.SGD])
def test_a_plan_that_does_not_change_with_the_count_sees_changed_hyperparameters(cls):
    params, opt = make(cls=cls, lr=0.01, momentum=0.5)
    warm(params, opt, steps=3)
    opt.param_groups[0]["lr"] = 0.5
    opt.param_groups[0]["momentum"] = 0.25
    step_and_compare(params, opt)
    assert planned(opt)


def test_hyperparameters_changed_in_place_are_seen():
    """Tensor hyperparameters (as torch allows) changed in place between steps: read at each step."""
    params, opt = make(lr=torch.tensor(0.01), betas=(torch.tensor(0.9), torch.tensor(0.999)))
    warm(params, opt)
    step_and_compare(params, opt)
    opt.param_groups[0]["lr"].fill_(0.5)
    opt.param_groups[0]["betas"][0].fill_(0.8)
    step_and_compare(params, opt, seed=8)
    assert planned(opt)


def test_a_bad_hyperparameter_set_between_steps_raises_before_anything_changes():
    params, opt = make(lr=0.01)
    warm(params, opt, steps=3)
    set_grads(params, 5)
    before = snapshot(opt)
    for name, value, error in [("lr", -1.0, ValueError), ("lr", True, TypeError), ("betas", (0.9, 1.5), ValueError)]:
        good = opt.param_groups[0][name]
        opt.param_groups[0][name] = value
        with pytest.raises(error, match=f"Invalid {name}|Invalid beta"):
            opt.step()
        assert_same(snapshot(opt), before)
        opt.param_groups[0][name] = good
    step_and_compare(params, opt)
    assert planned(opt)


def test_a_param_group_added():
    params, opt = make(n=4)
    first = params[:3]
    opt.param_groups[0]["params"] = first
    warm(first, opt)
    opt.add_param_group({"params": [params[3]]})
    step_and_compare(params, opt)
    assert not planned(opt)
    step_and_compare(params, opt, seed=8)  # steps 1, then 2: prepared
    step_and_compare(params, opt, seed=9)
    assert planned(opt)


def test_a_params_list_changed_in_place():
    params, opt = make(n=4)
    warm(params, opt)
    group = opt.param_groups[0]["params"]
    group[1], group[2] = group[2], group[1]
    step_and_compare(params, opt)
    assert not planned(opt)


def test_a_param_without_grad_is_skipped_as_torch_skips_it():
    params, opt = make(n=4, cls=ft.SGD, lr=0.1)  # (a rule that counts steps then has params a step behind)
    warm(params, opt)
    step_and_compare(params, opt, skip=[2])
    assert not planned(opt)
    for seed in (8, 9, 10):
        step_and_compare(params, opt, seed=seed)
    assert planned(opt)


@pytest.mark.parametrize("cls, hyper", [(ft.Adam, dict(lr=0.01, amsgrad=True)), (ft.Adagrad, dict(lr=0.1, lr_decay=0.01)),
                                        (ft.Lamb, dict(lr=0.01, weight_decay=0.01)), (ft.RAdam, dict(lr=0.01))],
                         ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_params_a_step_behind_are_planned(cls, hyper):
    """A param skipped once (its grad None) is a step behind the rest of its group from then on: the
    plan steps each count's params with that count's scalars."""
    params, opt = make(n=4, cls=cls, **hyper)
    warm(params, opt, steps=3)
    step_and_compare(params, opt, skip=[2])
    for seed in (8, 9, 10):
        step_and_compare(params, opt, seed=seed)
        assert planned(opt)
    assert [float(opt.state[p]["step"]) for p in params] == [7.0, 7.0, 6.0, 7.0]


@settings(max_examples=25, deadline=None)
@given(skips=st.lists(st.sets(st.integers(0, 3)), min_size=1, max_size=6), cls=st.sampled_from([ft.Adam, ft.AdamW,
                                                                                                 ft.SGD]),
       flat=st.booleans())
def test_any_params_skipped_at_any_steps(skips, cls, flat):
    """Whichever params skip whichever steps (a first step included), every step is a fresh optimizer's,
    bit for bit, and once every param has a grad again the plan takes the steps."""
    params, opt = make(n=4, cls=cls, lr=0.01, flat=flat, **({"momentum": 0.9} if cls is ft.SGD else {}))
    for k, skip in enumerate(skips):
        step_and_compare(params, opt, seed=k, skip=sorted(skip))
    for seed in (20, 21, 22):
        step_and_compare(params, opt, seed=seed)
    assert planned(opt)


def test_zero_grad_steps_nothing():
    params, opt = make()
    warm(params, opt, steps=3)
    before = snapshot(opt)
    opt.zero_grad()
    opt.step()
    assert_same(snapshot(opt), before)


@pytest.mark.parametrize("replace", ["entry", "state", "plain dict", "setdefault"])
def test_state_replaced(replace):
    """The same tensors (the step counts among them) in other containers: a state or an entry the
    optimizer made is planned again; a plain dict the user put in is stepped, never planned."""
    params, opt = make()
    warm(params, opt, steps=3)
    if replace == "entry":
        opt.state[params[1]] = dict(opt.state[params[1]])
    elif replace == "state":
        opt.state = type(opt.state)({p: dict(s) for p, s in opt.state.items()})
    elif replace == "plain dict":
        opt.state = {p: dict(s) for p, s in opt.state.items()}
    else:  # a change that changes nothing
        opt.state.setdefault(params[0], {})
    step_and_compare(params, opt)
    assert not planned(opt)
    step_and_compare(params, opt, seed=8)
    assert planned(opt) == (replace in ("state", "setdefault"))


def test_state_replaced_by_other_tensors():
    params, opt = make()
    warm(params, opt, steps=3)
    old = opt.state[params[1]]
    opt.state[params[1]] = {k: v.clone() for k, v in old.items()}
    kept = {k: v.clone() for k, v in old.items()}
    for seed in (7, 8, 9):
        step_and_compare(params, opt, seed=seed)
    for k, v in kept.items():
        assert torch.equal(old[k], v), "the replaced entry was stepped"
    del opt.state[params[0]]
    for seed in (10, 11):
        step_and_compare(params, opt, seed=seed)


@pytest.mark.parametrize("name", ["exp_avg", "step"])
def test_an_entry_value_replaced(name):
    params, opt = make()
    warm(params, opt, steps=3)
    old = opt.state[params[0]][name]
    opt.state[params[0]][name] = old.clone()
    kept = old.clone()
    step_and_compare(params, opt)
    assert torch.equal(old, kept), "the replaced tensor was stepped"


def test_load_state_dict_and_copies():
    params, opt = make()
    warm(params, opt, steps=3)
    assert planned(opt)
    saved = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(opt)
    again = pickle.loads(pickle.dumps(opt))
    for other in (twin, again):
        assert type(other.state) is type(opt.state) and "_prepared" not in other.__dict__
        assert other.state.keys() != opt.state.keys()  # its own params
    set_grads(params, 5)
    opt.step()
    opt.load_state_dict(saved)
    assert "_prepared" not in opt.__dict__
    for seed in (8, 9, 10):
        step_and_compare(params, opt, seed=seed)
    assert planned(opt)


def noncontiguous(grad):
    return grad.t().contiguous().t() if grad.dim() == 2 else grad.repeat(2)[::2]


@pytest.mark.parametrize("grad", [
    lambda p: noncontiguous(p.grad),
    lambda p: torch._neg_view(-p.grad),  # a negative bit, which DLPack cannot carry
    lambda p: p.grad.to(torch.bfloat16),
    lambda p: p.grad.requires_grad_(),
    lambda p: p.grad.expand(2, *p.shape)[0],
], ids=["non-contiguous", "negative view", "bfloat16", "requires grad", "expanded"])
def test_grads_the_plan_does_not_read_are_stepped_by_the_general_path(grad):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4 + k, generator=gen)) for k in range(3)]
    opt = ft.Adam(params, lr=0.01)
    warm(params, opt)
    for p in params:
        p.grad_dtype = None
    step_and_compare(params, opt, change=lambda p: setattr(p, "grad", grad(p)) if p is params[1] else None)


def test_a_grad_in_the_memory_of_a_param_raises_before_anything_changes():
    params, opt = make()
    warm(params, opt, steps=3)
    set_grads(params, 5)
    params[1].grad = params[1].data  # autograd never makes one; a user may
    before = snapshot(opt)
    with pytest.raises(ValueError):
        opt.step()
    assert_same(snapshot(opt), before)


@pytest.mark.parametrize("dtype, state_dtype", [(torch.bfloat16, None), (torch.bfloat16, "float32"),
                                                (torch.float16, None), (torch.float64, None)], ids=str)
def test_low_and_double_precision(dtype, state_dtype):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(37 + k, generator=gen).to(dtype)) for k in range(3)]
    opt = ft.AdamW(params, lr=0.01, state_dtype=state_dtype)
    warm(params, opt)
    for seed in (8, 9):
        step_and_compare(params, opt, seed=seed)
    assert planned(opt)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12), threads=st.sampled_from([1, 2]),
       isa=st.sampled_from([name for name, ok in fusedoptim.isa_levels() if ok] or [None]))
def test_sizes_threads_and_isa_levels(sizes, threads, isa):
    """Any sizes (empty, under and over a vector, past a thread's share), thread counts and levels:
    the same bits as a fresh optimizer's general path."""
    gen = torch.Generator().manual_seed(len(sizes))
    params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in sizes]
    opt = ft.Adam(params, lr=0.01)
    previous = fusedoptim.set_num_threads(threads), isa and fusedoptim.set_isa(isa)
    try:
        warm(params, opt)
        step_and_compare(params, opt)
        assert planned(opt)
    finally:
        fusedoptim.set_num_threads(previous[0])
        if isa:
            fusedoptim.set_isa(previous[1])


def outcome(step, opt):
    try:
        step()
    except Exception as error:  # noqa: BLE001
        return type(error), str(error)
    return snapshot(opt)


@pytest.mark.parametrize("grad", [lambda p: p.grad.to_sparse(), lambda p: p.grad.to(torch.float16)],
                         ids=["sparse", "float16 beside float32"])
def test_grads_the_plan_does_not_read_are_taken_as_a_fresh_step_takes_them(grad):
    """Whatever the general path does with them (step, or raise before anything changes)."""
    params, opt = make()
    warm(params, opt, steps=3)
    set_grads(params, 5)
    for p in params:
        p.grad_dtype = None
    params[2].grad = grad(params[2])
    expected = outcome(lambda: fresh_step(opt), opt)
    if not isinstance(expected, tuple):
        expected = fresh_step(opt)
    ours = outcome(opt.step, opt)
    assert not planned(opt)
    if isinstance(expected, tuple):
        assert ours == expected
    else:
        assert_same(ours, expected)


def test_a_state_replaced_while_no_plan_is_held():
    """(What a dropped plan was made from is compared by identity: a state of tensors has no truth value.)"""
    params, opt = make()
    warm(params, opt, steps=3)
    opt.state.setdefault(params[0], {})  # drops the plan at the next step
    step_and_compare(params, opt)
    opt.state = type(opt.state)({p: dict(s) for p, s in opt.state.items()})
    for seed in (8, 9):
        step_and_compare(params, opt, seed=seed)
    assert planned(opt)


def test_step_hooks_and_the_profiler_as_torch_runs_them():
    """torch's step wrapper runs only while a hook is registered or a profiler runs (it costs more
    than a small model's step): each hook then runs once a step, in torch's order."""
    params, opt = make()
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
               opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
               opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
    warm(params, opt)
    assert calls == ["global pre", "pre", "post", "global post"] * 2
    for handle in handles:
        handle.remove()
    warm(params, opt)
    assert len(calls) == 8
    with torch.autograd.profiler.profile() as profile:
        warm(params, opt, steps=1)
    assert [e.name for e in profile.function_events if e.name.startswith("Optimizer.step")] == ["Optimizer.step#Adam.step"]


@pytest.mark.parametrize("enabled", [True, False])
def test_grad_mode_is_restored(enabled):
    params, opt = make()
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        return 0.0

    with torch.set_grad_enabled(enabled):
        for seed in range(4):
            set_grads(params, seed)
            opt.step(closure)
            assert torch.is_grad_enabled() == enabled
        params[0].grad = params[0].data  # a step that raises
        with pytest.raises(ValueError):
            opt.step()
        assert torch.is_grad_enabled() == enabled
    assert seen == [True] * 4
