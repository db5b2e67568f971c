"""fusedoptim.torch on the odd input torch.optim accepts (shared memory, shared gradients), and
all-or-nothing steps: a failure anywhere in a step leaves every param, state and step as it was."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedoptim as fo  # noqa: E402
import fusedoptim.torch as ft  # noqa: E402

# Two Adam steps on values of order 10 round a few float32 operations per element differently
# from torch's op order: each result within 16 float32 ulps of 16, about 2e-5 of the scale,
# of torch's. Stepping overlapping params simultaneously rather than one after another
# changes results by about lr = 0.1, four orders of magnitude more (checked below).
CLOSE = 2e-5


def overlapping(layout):
    """A buffer and params that are overlapping views of it, as param groups."""
    buf = torch.arange(16, dtype=torch.float32) / 4
    if layout == "two groups":
        a, b = buf[0:10], buf[6:16]
        return buf, [{"params": [a]}, {"params": [b], "lr": 0.05}]
    if layout == "one group":
        a, b = buf[0:10], buf[6:16]
        return buf, [{"params": [a, b]}]
    if layout == "in a later group":  # the first group steps fine, the second used to raise after it
        return buf, [{"params": [buf[0:4]]}, {"params": [buf[4:12], buf[8:16]], "lr": 0.05}]
    a, b = buf[0:10], buf[::2]  # b is not dense: stepped on a copy, which must see a's update
    return buf, [{"params": [a, b]}]


def with_grads(groups):
    for k, p in enumerate(q for g in groups for q in g["params"]):
        p.requires_grad_(True)
        p.grad = torch.linspace(-1, 1, p.numel()) * (k + 1)
    return groups


def sequential_reference(buf, groups, steps, lr=0.1):
    """The NumPy functional API stepping each param in turn, in torch's order: the bits we must give."""
    memory = buf.detach().numpy().copy()
    params = [(p, g.get("lr", lr)) for g in groups for p in g["params"]]
    states = [(np.zeros(p.numel(), np.float32), np.zeros(p.numel(), np.float32)) for p, _ in params]
    itemsize = buf.element_size()
    for step in range(1, steps + 1):
        for (p, p_lr), (m, v) in zip(params, states):
            view = np.lib.stride_tricks.as_strided(memory[p.storage_offset():], (p.numel(),), (p.stride(0) * itemsize,))
            value = view.copy()
            fo.adam_(value, p.grad.numpy(), m, v, step=step, lr=p_lr, backend="numpy")
            view[...] = value
    return memory


@pytest.mark.parametrize("layout", ["two groups", "one group", "in a later group", "non-dense"])
def test_overlapping_params_are_stepped_one_after_another_as_torch_does(layout):
    buf, groups = overlapping(layout)
    opt = ft.Adam(with_grads(groups), lr=0.1)
    for _ in range(2):
        opt.step()
    reference_buf, reference_groups = overlapping(layout)
    expected = sequential_reference(reference_buf, with_grads(reference_groups), steps=2)
    assert buf.numpy().tobytes() == expected.tobytes()

    torch_buf, torch_groups = overlapping(layout)
    torch_opt = torch.optim.Adam(with_grads(torch_groups), lr=0.1, foreach=False)
    for _ in range(2):
        torch_opt.step()
    scale = float(torch_buf.abs().max())
    assert float((buf - torch_buf).abs().max()) <= CLOSE * scale

    # The guard: both params stepped from the values before the step (no overlap handling).
    simultaneous_buf, simultaneous_groups = overlapping(layout)
    with_grads(simultaneous_groups)
    for g in simultaneous_groups:
        for p in g["params"]:
            p.data = p.detach().clone()  # each its own memory: the other's update is not seen
    separate = ft.Adam(simultaneous_groups, lr=0.1)
    for _ in range(2):
        separate.step()
    last = simultaneous_groups[-1]["params"][-1]
    seen = {"non-dense": buf[::2], "in a later group": buf[8:16]}.get(layout, buf[6:16])
    assert float((seen - last.detach()).abs().max()) > 1e3 * CLOSE * scale


def test_one_gradient_for_two_params_as_torch_allows():
    a, b = torch.zeros(5, requires_grad=True), torch.zeros(5, requires_grad=True)
    c, d = torch.zeros(5, requires_grad=True), torch.zeros(5, requires_grad=True)
    shared = torch.linspace(-1, 1, 5)
    a.grad = b.grad = shared
    c.grad, d.grad = shared.clone(), shared.clone()
    ft.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1).step()
    ft.Adam([{"params": [c]}, {"params": [d], "lr": 0.5}], lr=0.1).step()
    assert torch.equal(a, c) and torch.equal(b, d) and not torch.equal(a, torch.zeros(5))
    e, f = torch.zeros(5, requires_grad=True), torch.zeros(5, requires_grad=True)
    e.grad = f.grad = shared
    ft.Adam([e, f], lr=0.1).step()  # in one call
    assert torch.equal(e, c) and torch.equal(f, c)


def state_of(opt):
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(
        s.keys() == b[k].keys() and all(torch.equal(v, b[k][n]) for n, v in s.items()) for k, s in a.items())


def test_expanded_params_are_rejected_when_added():
    """torch.optim raises on an expanded param too, but after updating its state and step."""
    expanded = torch.zeros(1).expand(4).requires_grad_(True)
    with pytest.raises(ValueError, match="expanded"):
        ft.Adam([expanded])
    opt = ft.Adam([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match="expanded"):
        opt.add_param_group({"params": [torch.zeros(2, 1).expand(2, 3).requires_grad_(True)]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("first", [True, False], ids=["first step", "later step"])
def test_a_param_expanded_later_fails_before_anything_changes(first):
    params = [torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)]
    opt = ft.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    for p in params:
        p.grad = torch.ones(4)
    if not first:
        opt.step()
    params[1].data = torch.zeros(1).expand(4)  # as model surgery might
    before, values = state_of(opt), params[0].detach().clone()
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\]: param is expanded"):
        opt.step()
    assert same_state(state_of(opt), before) and torch.equal(params[0], values)


def spoil_later_group():
    """(label, spoil the second group of a two-group Adam, error, message)."""
    def lr(value):
        return lambda opt, params: opt.param_groups[1].__setitem__("lr", value)

    def grad_is_param_0(opt, params):
        params[1].grad = params[0].detach()[:4]

    return [
        ("lr overflows float32", lr(1e300), ValueError, "Invalid step_size"),
        ("negative lr", lr(-1.0), ValueError, "Invalid lr"),
        ("grad is another group's param", grad_is_param_0, ValueError,
         "the gradient of param_groups[1]['params'][0]"),
    ]


@pytest.mark.parametrize("first", [True, False], ids=["first step", "later step"])
@pytest.mark.parametrize("label,spoil,error,message", spoil_later_group(), ids=[s[0] for s in spoil_later_group()])
def test_a_failing_group_leaves_every_group_untouched(first, label, spoil, error, message):
    params = [torch.ones(6, requires_grad=True), torch.ones(4, requires_grad=True)]
    opt = ft.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=0.1)
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    if not first:
        opt.step()
    spoil(opt, params)
    before, values = state_of(opt), [p.detach().clone() for p in params]
    with pytest.raises(error) as raised:
        opt.step()
    assert message in str(raised.value)
    assert same_state(state_of(opt), before)
    assert all(torch.equal(p, v) for p, v in zip(params, values))


def test_interrupted_after_the_kernels_still_counts_the_step(monkeypatch):
    """Ctrl-C during a long native step is handled when it returns: step and the new states
    must still be recorded, or the next step would take step 1's bias corrections again."""
    import os
    import signal

    params = [torch.ones(4, requires_grad=True) for _ in range(3)]
    for p in params:
        p.grad = torch.ones(4)
    opt = ft.Adam(params, lr=0.1)
    real = fo._backends.step

    def then_interrupt(*args):
        real(*args)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(fo._backends, "step", then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        opt.step()
    assert [float(opt.state[p]["step"]) for p in params] == [1.0] * 3
    assert all(torch.all(p < 1) for p in params)


def test_overlapping_params_stepped_one_by_one_keep_their_reduction(monkeypatch):
    """A two-pass call split into one call per param (they share memory) hands each param's own sums to
    the reduction of the whole call, in its row, and takes that row back."""
    seen = []

    def doubled(sums):
        seen.append(sums.copy())
        sums *= 2

    monkeypatch.setattr(ft.Optimizer, "_reduction", lambda self, params: doubled)
    buf = torch.linspace(-1, 1, 16)
    a, b = buf[0:10], buf[6:16]
    for k, p in enumerate((a, b)):
        p.requires_grad_(True)
        p.grad = torch.linspace(-1, 1, p.numel()) * (k + 1)
    ft.Lamb([a, b], lr=0.1).step()
    assert [rows.shape for rows in seen] == [(2, 2), (2, 2)]
    assert not seen[0][1].any() and not seen[1][0].any()  # each call's other row is zero

    memory = torch.linspace(-1, 1, 16).numpy()
    for k, (start, stop) in enumerate(((0, 10), (6, 16))):
        value = memory[start:stop].copy()
        fo._backends.step(None, fo._rules.RULES["lamb"], fo._rules.RULES["lamb"].plan(1, lr=0.1), [value],
                          [(torch.linspace(-1, 1, 10) * (k + 1)).numpy()], ([np.zeros(10, np.float32)],
                                                                            [np.zeros(10, np.float32)]),
                          reduce=lambda sums: sums.__imul__(2))
        memory[start:stop] = value
    assert buf.detach().numpy().tobytes() == memory.tobytes()
