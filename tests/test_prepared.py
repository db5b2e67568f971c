"""The stateful core's prepared operands (``Stateful._prepared_operands``): a step that reuses the
arrays of the last one must be the step a fresh optimizer takes from the same state, bit for bit,
whatever changed in between: a param's storage (``p.data = x``), a state buffer replaced, a
checkpoint loaded, params added."""

import copy

import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedoptim.torch")
from conftest import assert_bitwise_equal  # noqa: E402


def make(n=3, seed=0, cls=None, **hyper):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5 + k, generator=gen)) for k in range(n)]
    return params, (cls or ft.Adam)(params, **hyper)


def set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)  # new objects, as zero_grad leaves them


def fresh_step(opt):
    """The params and states after the step a fresh optimizer of the same groups (nothing prepared,
    nothing planned) takes from ``opt``'s params, grads and state."""
    twin_of = {p: torch.nn.Parameter(p.detach().clone()) for group in opt.param_groups for p in group["params"]}
    twin = type(opt)([{**group, "params": [twin_of[p] for p in group["params"]]} for group in opt.param_groups],
                     state_dtype="float32" if opt._float32_states else None)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in twin_of.items():
        any_dtype(q)
        q.grad = None if p.grad is None else p.grad.clone()
    twin.step()
    return snapshot(twin)


def any_dtype(p):
    """Lets ``p`` take a gradient of another dtype (torch >= 2.9 holds it to ``grad_dtype``)."""
    if hasattr(p, "grad_dtype"):
        p.grad_dtype = None


def snapshot(opt):
    """Each param and its state, as bits (``opt.state[p]`` of a param without state would add one)."""
    def bits(t):
        t = t.detach().clone()
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t

    params = [p for group in opt.param_groups for p in group["params"]]
    return [(bits(p), {k: bits(v) for k, v in opt.state.get(p, {}).items()}) for p in params]


def assert_same(ours, theirs):
    for (p, state), (q, twin_state) in zip(ours, theirs, strict=True):
        assert torch.equal(p, q), "param"
        assert state.keys() == twin_state.keys()
        for name in state:
            assert torch.equal(state[name], twin_state[name]), name


def warm(params, opt, steps=2):
    """Steps enough for the step after to be a prepared one."""
    for k in range(steps):
        set_grads(params, 100 + k)
        opt.step()


def step_and_compare(params, opt, seed=7, skip=(), change=None):
    """A step of ``opt`` on new grads (``skip``: params given none; ``change``: done to each param
    with its grad) is the one a fresh optimizer takes from the same state."""
    set_grads(params, seed)
    for k in skip:
        params[k].grad = None
    for p in params if change else ():
        change(p)
    expected = fresh_step(opt)
    opt.step()
    assert_same(snapshot(opt), expected)


def test_param_data_replaced():
    params, opt = make()
    warm(params, opt)
    params[1].data = torch.randn(params[1].shape) * 3  # same Parameter object, other memory
    step_and_compare(params, opt)


def test_param_data_replaced_by_another_dtype():
    params, opt = make()
    warm(params, opt)
    for p in params:  # all of them, so that the group is still one bucket
        p.data = p.data.double()
        for name in ("exp_avg", "exp_avg_sq"):
            opt.state[p][name] = opt.state[p][name].double()
    step_and_compare(params, opt)


@pytest.mark.parametrize("name", ["exp_avg", "exp_avg_sq"])
def test_state_buffer_replaced(name):
    params, opt = make()
    warm(params, opt)
    opt.state[params[2]][name] = torch.rand(params[2].shape)
    step_and_compare(params, opt)


def test_state_buffer_data_replaced():
    params, opt = make()
    warm(params, opt)
    opt.state[params[0]]["exp_avg"].data = torch.rand(params[0].shape)  # same object, other memory
    step_and_compare(params, opt)


def test_load_state_dict():
    params, opt = make()
    warm(params, opt)
    other_params, other = make(seed=1)
    warm(other_params, other, steps=3)
    opt.load_state_dict(other.state_dict())
    step_and_compare(params, opt)


def test_amsgrad_switched_on_uses_another_state():
    params, opt = make()
    warm(params, opt)
    opt.param_groups[0]["amsgrad"] = True  # the step now uses (and creates) max_exp_avg_sq
    step_and_compare(params, opt)
    step_and_compare(params, opt, seed=8)


def test_params_added_and_skipped():
    params, opt = make()
    warm(params, opt)
    extra = torch.nn.Parameter(torch.randn(4))
    opt.param_groups[0]["params"].append(extra)  # one more param in the same group
    params.append(extra)
    step_and_compare(params, opt, seed=9)  # a bucket per step count
    step_and_compare(params, opt, seed=10, skip=[1])
    step_and_compare(params, opt, seed=11, skip=[1])


def test_a_copy_prepares_its_own():
    params, opt = make()
    warm(params, opt)
    twin = copy.deepcopy(opt)
    twin_params = [p for group in twin.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    set_grads(twin_params, 11)
    twin.step()
    for p, b in zip(params, before):
        assert_bitwise_equal(p.detach().numpy(), b.numpy(), "the original's param")
    assert not all(torch.equal(p, q) for p, q in zip(twin_params, before))


def test_resized_in_place_is_rejected_before_anything_changes():
    """A param reshaped in place keeps its memory (so its prepared array looks valid) but no longer
    has the shape of its state, as torch.optim would also find; the step raises and changes nothing."""
    params, opt = make()
    warm(params, opt)
    p = params[1]  # 6 elements
    p.data = p.data.view(2, 3)
    set_grads(params, 12)
    before = snapshot(opt)
    with pytest.raises(ValueError):
        opt.step()
    assert_same(snapshot(opt), before)


@pytest.mark.parametrize("n", [3, 40])  # fill_ each, or one call for all
def test_step_counts_are_advanced_as_torch_keeps_them(n):
    params, opt = make(n)
    theirs = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in params])
    for k in range(3):
        set_grads(params, k)
        set_grads([p for group in theirs.param_groups for p in group["params"]], k)
        opt.step()
        theirs.step()
    big = 2**24 + 1  # not a float32: rounded once, as torch's float32 step tensor holds it
    for state in list(opt.state.values())[:2]:
        state["step"] = torch.tensor(float(big), dtype=torch.float64)
    opt.step()
    for p, q in zip(params, [p for group in theirs.param_groups for p in group["params"]]):
        ours, expected = opt.state[p]["step"], theirs.state[q]["step"]
        if ours.dtype == torch.float64:
            assert ours.item() == big + 1
        else:
            assert (ours.dtype, ours.shape, ours.item()) == (expected.dtype, expected.shape, 4.0)


# --- The step counts: 0-d views of one tensor per group, read and advanced with one op each ---

@pytest.mark.parametrize("change", ["replaced", "filled", "data replaced", "all filled"])
def test_a_step_tensor_changed_by_the_user_is_read_and_advanced(change):
    params, opt = make()
    warm(params, opt)
    state = opt.state[params[1]]
    mine = torch.tensor(7.0)
    if change == "replaced":
        state["step"] = mine
    elif change == "filled":
        state["step"].fill_(7)
    elif change == "data replaced":  # same object, other memory: the view no longer views its element
        state["step"].data = mine
    else:
        for p in params:
            opt.state[p]["step"].fill_(7)
    step_and_compare(params, opt)
    assert [float(opt.state[p]["step"]) for p in params] == [8.0] * 3 if change == "all filled" else [3.0, 8.0, 3.0]
    if change in ("replaced", "data replaced"):
        assert mine.item() == 8.0  # the user's tensor is advanced in place, as torch advances it
    step_and_compare(params, opt, seed=8)


def test_step_counts_are_read_from_a_state_dict_as_saved_and_stepped_as_torch_does():
    params, opt = make()
    warm(params, opt)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][1]["step"] = torch.tensor(5.0)
    theirs_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = torch.optim.Adam(theirs_params)
    theirs.load_state_dict(copy.deepcopy(saved))
    opt.load_state_dict(saved)
    for k in range(2):
        set_grads(params, 20 + k)
        set_grads(theirs_params, 20 + k)
        opt.step()
        theirs.step()
    for p, q in zip(params, theirs_params):
        ours, expected = opt.state[p]["step"], theirs.state[q]["step"]
        assert (ours.dtype, ours.shape, ours.item()) == (expected.dtype, expected.shape, expected.item())
        torch.testing.assert_close(p, q)


def test_eager_state_is_counted_from_zero():
    params, opt = make(cls=ft.Adagrad)
    assert [opt.state[p]["step"].item() for p in params] == [0.0] * 3
    warm(params, opt)
    step_and_compare(params, opt)
    assert [opt.state[p]["step"].item() for p in params] == [3.0] * 3


def test_a_copy_counts_its_own_steps():
    params, opt = make()
    warm(params, opt)
    twin = copy.deepcopy(opt)
    twin_params = [p for group in twin.param_groups for p in group["params"]]
    set_grads(twin_params, 11)
    twin.step()
    assert [opt.state[p]["step"].item() for p in params] == [2.0] * 3
    assert [twin.state[p]["step"].item() for p in twin_params] == [3.0] * 3


# --- The grads: read afresh each step, each as the first step of a fresh optimizer reads it ---

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_grads_that_change_dtype_between_steps(dtype):
    params, opt = make()
    warm(params, opt)
    step_and_compare(params, opt, change=lambda p: (any_dtype(p), setattr(p, "grad", p.grad.to(dtype))))


def test_grads_that_require_grad():
    params, opt = make()
    warm(params, opt)
    step_and_compare(params, opt, change=lambda p: p.grad.requires_grad_(True))


def test_complex_params():
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5 + k, dtype=torch.complex64, generator=gen)) for k in range(3)]
    opt = ft.Adam(params)
    warm(params, opt)
    step_and_compare(params, opt)


def bad_grads():
    """How a grad goes bad, and the words of torch's layer for it."""
    return {
        "float64": (lambda p: setattr(p, "grad", p.grad.double()), "gradient is torch.float64 but the param is"),
        "int": (lambda p: setattr(p, "grad", p.grad.to(torch.int32)), "gradient has dtype torch.int32"),
        "complex": (lambda p: setattr(p, "grad", p.grad.to(torch.complex64)), "gradient is torch.complex64 but"),
        "shape": (lambda p: p.grad.set_(p.grad[:2].clone()), "gradient has shape (2,) but the param (6,)"),
        "sparse": (lambda p: setattr(p, "grad", p.grad.to_sparse()), "Adam does not support sparse gradients"),
        "dtype in place": (lambda p: setattr(p.grad, "data", p.grad.data.double()), "gradient is torch.float64 but"),
    }


@pytest.mark.parametrize("bad", list(bad_grads()))
def test_a_bad_grad_of_a_prepared_step_raises_as_a_fresh_step_does(bad):
    """The checks of a step's params and grads run once it has failed, to word its error: a step that
    reuses the last step's arrays raises what the first step of a fresh optimizer raises, and changes nothing."""
    params, opt = make()
    warm(params, opt)
    set_grads(params, 7)
    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = type(opt)(fresh_params)
    for p, q in zip(params, fresh_params):
        q.grad = p.grad.clone()
    spoil, message = bad_grads()[bad]
    for p in params[1], fresh_params[1]:
        any_dtype(p)
        spoil(p)
    with pytest.raises((TypeError, ValueError, RuntimeError)) as expected:
        fresh.step()
    before = snapshot(opt)
    with pytest.raises(type(expected.value)) as raised:
        opt.step()
    assert str(raised.value) == str(expected.value)
    assert "param_groups[0]['params'][1]" in str(raised.value) and message in str(raised.value)
    assert_same(snapshot(opt), before)


def test_counts_past_float32_are_rounded_once_as_torch_keeps_them():
    params, opt = make()
    warm(params, opt)
    for p in params:
        opt.state[p]["step"].fill_(2**24)  # the next count, 2**24 + 1, is no float32
    step_and_compare(params, opt)
    assert {(opt.state[p]["step"].dtype, opt.state[p]["step"].item()) for p in params} == {(torch.float32, 2.0**24)}
