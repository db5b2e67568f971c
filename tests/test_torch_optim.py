"""fusedoptim.torch against torch.optim: trajectories, checkpoints both ways, the Optimizer API, bad input.

Trajectories are compared with an fp64 ground truth, torch's float64 run of the same rule on the same
gradients, after every step (conftest's Distances, with its derivation of the bounds): ours in float32
may stray from it no farther than FACTOR times torch's own float32 run, plus one ulp of the tensor's
scale per step; ours in float64, (FACTOR + 1) * 2^-29 times torch's float32 distance plus the float64
floor. All are driven by the same real gradients (backprop through torch's float32 copy of the MLP:
teacher forcing), because training feeds any difference back: perturbing ONE weight of torch's own
run by one ulp moves the params after 100 steps by up to 5e-4 of their scale (RMSprop).
"""

import inspect
import io
import subprocess
import sys

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _api
from fusedoptim._rules import RULES

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedoptim.torch")
from conftest import CASES, Distances, assert_bitwise_equal, params_of, torch_default_dtype  # noqa: E402


# torch classes that are another's with a flag fixed: name -> (that class, the fixed flag)
VARIANTS = {"AdamW": ("Adam", {"decoupled_weight_decay": True})}


def torch_grid(name):
    """The flag combinations of ``name``'s case that torch.optim has, each once: fusedoptim-only flags
    at their torch value, caller-owned step arguments (host states such as NAdam's mu_product, which
    torch keeps in state) dropped."""
    base, fixed = VARIANTS.get(name, (name, {}))
    case = next(c for c in CASES if c.torch_name == base)
    params = inspect.signature(getattr(torch.optim, name)).parameters
    extra, owned = {"bias_correction": True, **fixed}, set(RULES[case.name].host_states)
    grid = []
    for h in case.grid:
        if all(k in params or k in owned or extra.get(k) == v for k, v in h.items()) \
                and all(h.get(k) == v for k, v in fixed.items()):
            kept = {k: v for k, v in h.items() if k in params}
            if kept not in grid:
                grid.append(kept)
    return grid


TORCH_NAMES = [c.torch_name for c in CASES if c.torch_name] + list(VARIANTS)
TORCH_CASES = [pytest.param(name, h, id=f"{name}-{i}") for name in TORCH_NAMES for i, h in enumerate(torch_grid(name))]
# One combination per rule with every state buffer in use, for the checkpoint and API tests.
RICHEST = {"SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
           "Adagrad": dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
           "RMSprop": dict(lr=0.01, momentum=0.9, centered=True),
           "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
           "AdamW": dict(lr=0.01, amsgrad=True, weight_decay=0.1),
           "Adamax": dict(lr=0.01, weight_decay=0.01),
           "NAdam": dict(lr=0.01, weight_decay=0.01, momentum_decay=0.01),
           "RAdam": dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
           "Adadelta": dict(lr=0.5, weight_decay=0.01),
           "ASGD": dict(lr=0.05, lambd=0.01, t0=3.0, weight_decay=0.01),  # averaging from step 6 on
           "Rprop": dict(lr=0.05, etas=(0.4, 1.3), step_sizes=(1e-4, 0.5))}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """torch's intra-op threads only slow these tiny tensors down, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_rule_has_a_torch_optimizer():
    """A rule with a torch twin (Case.torch_name) needs its fusedoptim.torch class and a RICHEST entry."""
    names = set(TORCH_NAMES)
    assert names == set(RICHEST)
    for name in names:
        assert issubclass(getattr(ft, name), torch.optim.Optimizer)


def test_signatures_and_defaults_are_torchs():
    """torch's arguments and defaults, then fusedoptim's layer options (state_dtype, master_weights, rounding, seed,
    flat)."""
    layer = [("state_dtype", None), ("master_weights", False), ("rounding", "nearest"), ("seed", 0), ("flat", False)]
    for name in RICHEST:
        ours, theirs = inspect.signature(getattr(ft, name)), inspect.signature(getattr(torch.optim, name))
        same, extra = list(ours.parameters.values())[:-len(layer)], list(ours.parameters.values())[-len(layer):]
        assert [(p.name, p.default, p.kind) for p in same] == \
               [(p.name, p.default, p.kind) for p in theirs.parameters.values()], name
        assert [(p.name, p.default, p.kind) for p in extra] == [(*o, inspect.Parameter.KEYWORD_ONLY) for o in layer]
        params = [torch.zeros(3, requires_grad=True)]
        assert getattr(ft, name)(params).defaults == getattr(torch.optim, name)(params).defaults


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g, dtype=dtype), torch.randint(0, 4, (64,), generator=g)


def mlp(dtype=torch.float32):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def backward(model, batch, maximize=False):
    loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
    (-loss if maximize else loss).backward()  # maximize the negated loss: the same descent, not a divergence
    return loss


def follower(model, dtype=torch.float32):
    """A copy of the model's params, in ``dtype``, that take the model's gradients."""
    return [p.detach().to(dtype, copy=True).requires_grad_() for p in model.parameters()]


def truth(name, weights, **hyper):
    """torch's optimizer ``name`` on float64 ``weights``: the ground truth of a float32 run."""
    return getattr(torch.optim, name)(weights, foreach=False, **hyper)


def step_in_own_dtype(opt):
    with torch_default_dtype(params_of(opt)[0].dtype):
        opt.step()


def lead(model, batch, leader, followers, steps, maximize=False, watch=()):
    """``steps`` steps of ``leader`` on the model, each follower optimizer stepping on the same gradients;
    then each of ``watch`` (Against) records how far its follower is."""
    for _ in range(steps):
        leader.zero_grad()
        backward(model, batch, maximize)
        for opt in followers:
            for p, q in zip(model.parameters(), params_of(opt)):
                q.grad = p.grad.to(q.dtype, copy=True)  # a float64 follower takes them upcast
        leader.step()
        for opt in followers:
            step_in_own_dtype(opt)
        for w in watch:
            w.record()


def states(opt):
    return [(k, v) for s in opt.state_dict()["state"].values() for k, v in sorted(s.items())]


def tensors(opt):
    """Params and states but the step count, as NumPy arrays, with their names."""
    arrays, names = [], []
    for i, p in enumerate(params_of(opt)):
        arrays.append(p.detach().numpy())
        names.append(f"params[{i}]")
    for i, p in enumerate(params_of(opt)):
        for k, v in sorted(opt.state[p].items()):
            if k != "step":
                arrays.append(v.numpy())
                names.append(f"{k}[{i}]")
    return arrays, names


class Against:
    """Records, after every step, how far optimizer ``ours`` (float32 or float64) is from torch's float64
    run ``exact`` beside torch's float32 run ``theirs`` (conftest's Distances): params and every state,
    with equal step counts."""

    def __init__(self, ours, theirs, exact):
        self.ours, self.theirs, self.exact = ours, theirs, exact
        self.distances = Distances()

    def record(self):
        counts = [[float(opt.state[p]["step"]) for p in params_of(opt) if "step" in opt.state[p]]
                  for opt in (self.ours, self.exact)]
        assert counts[0] == counts[1], "step counts"
        runs = [tensors(opt) for opt in (self.ours, self.theirs, self.exact)]
        assert runs[0][1] == runs[1][1] == runs[2][1], "state names"
        self.distances.record(*(arrays for arrays, _ in runs), runs[2][1])


@pytest.mark.parametrize("name, hyper", TORCH_CASES)
def test_trajectory_matches_torch(name, hyper):
    """100 steps: ours in float32 and in float64 against torch's float64 run (both bounds set by torch's
    float32 run). The float64 check replaces a closed loop (each training on its own gradients), whose
    chaos hid any difference smaller than what one ulp of one weight grows into: up to 2e-9 of the
    scale (NAdam with L2 weight decay), where this bound is about 1e-14."""
    model, batch = mlp(), data()
    theirs = getattr(torch.optim, name)(model.parameters(), foreach=False, **hyper)
    ours = getattr(ft, name)(follower(model), **hyper)
    ours64 = getattr(ft, name)(follower(model, torch.float64), **hyper)
    exact = truth(name, follower(model, torch.float64), **hyper)
    watch = [Against(ours, theirs, exact), Against(ours64, theirs, exact)]
    lead(model, batch, theirs, [ours, ours64, exact], steps=100, maximize=hyper.get("maximize", False), watch=watch)
    for w in watch:
        w.distances.check()


class Drifting(ft.Adam):
    """ft.Adam whose params then move 4 ulps up each step: a bias of the size rounding makes."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for p in params_of(self):
            for _ in range(4):
                p.copy_(torch.nextafter(p, torch.tensor(np.inf, dtype=p.dtype)))
        return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("make_ours, hyper", [
    (ft.AdamW, dict(lr=0.01, weight_decay=0.05)),
    (lambda ps, **h: ft.Adam(ps, betas=(0.9, 0.998), **h), dict(lr=0.01)),
    (Drifting, dict(lr=0.01)),
], ids=["AdamW as Adam", "beta2 0.998 as 0.999", "4 ulps a step"])
def test_a_different_rule_is_caught(make_ours, hyper, dtype):
    """Guards the bounds: each of these, compared with torch's Adam, must exceed them."""
    model, batch = mlp(), data()
    theirs = torch.optim.Adam(model.parameters(), foreach=False, **hyper)
    ours = make_ours(follower(model, dtype), **hyper)
    exact = truth("Adam", follower(model, torch.float64), **hyper)
    watch = Against(ours, theirs, exact)
    lead(model, batch, theirs, [ours, exact], steps=100, watch=[watch])
    share, what = watch.distances.share()
    assert share > 1, what


def checkpoint(opt):
    """A state_dict through torch.save/torch.load, as a file on disk would carry it."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("name", RICHEST)
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_checkpoint_round_trip(name, direction):
    hyper = RICHEST[name]
    model, batch = mlp(), data()
    reference = getattr(torch.optim, name)(model.parameters(), foreach=False, **hyper)
    first, second = getattr(torch.optim, name), getattr(ft, name)
    if direction == "ours_to_torch":
        first, second = second, first
    weights = follower(model)
    before = first(weights, **hyper)
    exact = truth(name, follower(model, torch.float64), **hyper)
    watch = Against(before, reference, exact)
    lead(model, batch, reference, [before, exact], steps=10, watch=[watch])
    saved = checkpoint(before)
    after = second(weights, **hyper)
    after.load_state_dict(saved)
    assert after.state_dict()["param_groups"] == saved["param_groups"]
    for mine, loaded in zip(after.state_dict()["state"].values(), saved["state"].values()):
        assert mine.keys() == loaded.keys()
        assert mine.get("step", torch.tensor(0.0)).dtype == torch.float32
    watch.ours = after  # the loaded optimizer carries on the run
    lead(model, batch, reference, [after, exact], steps=10, watch=[watch])
    watch.distances.check()


@pytest.mark.parametrize("name", RICHEST)
def test_state_dict_layout_equals_torchs(name):
    model, batch = mlp(), data()
    theirs = getattr(torch.optim, name)(model.parameters(), **RICHEST[name])
    ours = getattr(ft, name)(follower(model), **RICHEST[name])
    for when in ("fresh", "after a step"):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a["param_groups"] == b["param_groups"], when
        assert a["state"].keys() == b["state"].keys(), when
        for i in a["state"]:
            assert a["state"][i].keys() == b["state"][i].keys(), when
            for k, v in a["state"][i].items():
                assert (v.dtype, v.shape, v.stride()) == (b["state"][i][k].dtype, b["state"][i][k].shape,
                                                         b["state"][i][k].stride()), (when, k)
        lead(model, batch, theirs, [ours], steps=1)


def test_sgd_without_momentum_keeps_no_state():
    model, batch = mlp(), data()
    opt = ft.SGD(model.parameters(), lr=0.1)
    backward(model, batch)
    opt.step()
    assert opt.state_dict()["state"] == {} and not opt.state  # torch keeps no entry at all


def test_closure_returns_the_loss_and_steps():
    model, batch = mlp(), data()
    opt = ft.Adam(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        return backward(model, batch)

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.requires_grad
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_zero_grad_and_none_grads_are_skipped():
    model, batch = mlp(), data()
    opt = ft.Adam(model.parameters())
    backward(model, batch)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    frozen = model[0].weight
    before = frozen.detach().clone()
    backward(model, batch)
    frozen.grad = None
    opt.step()
    assert torch.equal(frozen, before) and frozen not in opt.state
    assert all(int(opt.state[p]["step"]) == 1 for p in model.parameters() if p is not frozen)


@pytest.mark.parametrize("make_schedule", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch)),
], ids=["StepLR", "LambdaLR"])
def test_lr_scheduler_matches_torch(make_schedule):
    model, batch = mlp(), data()
    theirs = torch.optim.Adam(model.parameters(), lr=0.01, foreach=False)
    ours = ft.Adam(follower(model), lr=0.01)
    exact = truth("Adam", follower(model, torch.float64), lr=0.01)
    schedules = [make_schedule(opt) for opt in (theirs, ours, exact)]
    watch = Against(ours, theirs, exact)
    for _ in range(10):
        lead(model, batch, theirs, [ours, exact], steps=1, watch=[watch])
        for s in schedules:
            s.step()
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"] == exact.param_groups[0]["lr"]
    assert ours.param_groups[0]["lr"] < 0.01
    watch.distances.check()


def test_add_param_group_with_its_own_hyperparameters():
    model, batch = mlp(), data()
    theirs = torch.optim.SGD(list(model[0].parameters()), lr=0.05, momentum=0.9, foreach=False)
    mine, wide = follower(model), follower(model, torch.float64)
    ours = ft.SGD(mine[:2], lr=0.05, momentum=0.9)
    exact = truth("SGD", wide[:2], lr=0.05, momentum=0.9)
    for opt, rest in [(theirs, list(model[2].parameters())), (ours, mine[2:]), (exact, wide[2:])]:
        opt.add_param_group({"params": rest, "lr": 0.1, "nesterov": True})
    assert ours.param_groups[1]["momentum"] == 0.9 and ours.param_groups[1]["nesterov"]
    watch = Against(ours, theirs, exact)
    lead(model, batch, theirs, [ours, exact], steps=20, watch=[watch])
    watch.distances.check()
    with pytest.raises(ValueError, match="more than one parameter group"):
        ours.add_param_group({"params": mine[:1]})


@pytest.mark.parametrize("name", RICHEST)
def test_views_and_non_contiguous_params_are_stepped(name):
    """A transposed weight, a row slice and a strided column slice of a bigger tensor, a scalar."""
    torch.manual_seed(2)
    base = torch.randn(6, 10)
    shapes = [lambda b: b.t(), lambda b: b[1:4], lambda b: b[:, 2:5], lambda b: b[0, 0]]
    leaves_ref = [torch.randn(6, 10).t().contiguous(), torch.randn(3, 10), torch.randn(6, 3), torch.randn(())]
    ours_base = [base.clone() for _ in shapes]
    ours = [make(b).requires_grad_() for make, b in zip(shapes, ours_base)]
    for ref, p in zip(leaves_ref, ours):
        with torch.no_grad():
            p.copy_(ref)
        ref.requires_grad_()
    untouched = [b.clone() for b in ours_base]
    assert [p.is_contiguous() for p in ours] == [False, True, False, True]
    leaves_exact = [ref.detach().double().requires_grad_() for ref in leaves_ref]
    a = getattr(ft, name)(ours, **RICHEST[name])
    b = getattr(torch.optim, name)(leaves_ref, foreach=False, **RICHEST[name])
    exact = truth(name, leaves_exact, **RICHEST[name])
    watch = Against(a, b, exact)
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        for p, ref, wide in zip(ours, leaves_ref, leaves_exact):
            ref.grad = torch.randn(ref.shape, generator=g)
            p.grad, wide.grad = ref.grad.clone(), ref.grad.double()
        for opt in (a, b, exact):
            step_in_own_dtype(opt)
        watch.record()
    watch.distances.check()
    # Only the viewed elements of each base tensor changed.
    for make, got, was in zip(shapes, ours_base, untouched):
        mask = torch.zeros(6, 10, dtype=torch.bool)
        make(mask).fill_(True)
        assert torch.equal(got[~mask], was[~mask])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_rprop_equals_torch_bitwise_nan_and_inf_included(dtype):
    """Rprop rounds twice per element, step_size * factor and param - step, where torch rounds the
    same two (its other products, by 0 and +-1, are exact, so no FMA changes them): ours equals
    torch.optim.Rprop bit for bit. Its signs are torch.sign's, 0 for NaN: a NaN or zero gradient
    leaves the param where it was. Gradients of either sign, zeros, Inf and NaN, and flips."""
    g = torch.Generator().manual_seed(3)
    initial = torch.randn(300, generator=g, dtype=dtype)
    theirs, ours = initial.clone().requires_grad_(), initial.clone().requires_grad_()
    hyper = dict(lr=0.05, etas=(0.4, 1.3), step_sizes=(1e-3, 0.2), maximize=True)
    optimizers = [torch.optim.Rprop([theirs], foreach=False, **hyper), ft.Rprop([ours], **hyper)]
    for _ in range(12):
        grad = torch.randn(300, generator=g, dtype=dtype)
        special = torch.randint(0, 12, (300,), generator=g)
        grad[special == 0] = 0.0
        grad[special == 1] = float("nan")
        grad[special == 2] = float("inf")
        grad[special == 3] = -float("inf")
        theirs.grad, ours.grad = grad.clone(), grad.clone()
        for opt in optimizers:
            step_in_own_dtype(opt)
        assert_bitwise_equal(ours.detach().numpy(), theirs.detach().numpy(), "params")
        for name in ("prev", "step_size"):
            assert_bitwise_equal(optimizers[1].state[ours][name].numpy(), optimizers[0].state[theirs][name].numpy(), name)
    assert not theirs.isnan().any() and optimizers[0].state[theirs]["prev"].isnan().any()


def test_transposed_param_is_stepped_in_place_without_copies():
    w = torch.randn(8, 5).t().requires_grad_()
    opt = ft.Adam([w])
    w.grad = torch.randn(8, 5).t()
    opt.step()
    assert opt.state[w]["exp_avg"].stride() == w.stride()


def snapshot(opt):
    return [p.detach().clone() for g in opt.param_groups for p in g["params"]] + \
           [v.clone() for s in opt.state.values() for v in s.values()]


def assert_unchanged(opt, before):
    after = snapshot(opt)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("spoil, error, match", [
    (lambda p: (setattr(p, "grad_dtype", None), setattr(p, "grad", p.grad.double())), TypeError,
     r"\['params'\]\[0\].*gradient is torch.float64"),
    (lambda p: p.grad.set_(p.grad[:1].clone()), ValueError, "has shape"),
    (lambda p: setattr(p, "grad", p.grad.to_sparse()), RuntimeError, "Adam does not support sparse gradients"),
], ids=["grad dtype", "grad shape", "sparse grad"])
def test_bad_gradient_raises_and_modifies_nothing(spoil, error, match):
    model, batch = mlp(), data()
    good, bad = list(model[0].parameters()), list(model[2].parameters())
    opt = ft.Adam([{"params": good}, {"params": bad}], lr=0.1)
    backward(model, batch)
    opt.step()
    backward(model, batch)
    spoil(bad[0])
    before = snapshot(opt)
    with pytest.raises(error, match=match):
        opt.step()
    assert_unchanged(opt, before)


@pytest.mark.parametrize("change, match", [  # torch's wording at construction, the plan's at a step
    ({"lr": -1.0}, "Invalid (learning rate|lr)"),
    ({"betas": (0.9, 1.5)}, "Invalid (beta parameter at index 1|beta2)"),
    ({"capturable": True}, "capturable"),
    ({"differentiable": True}, "differentiable"),
])
def test_bad_hyperparameters_raise_and_modify_nothing(change, match):
    model, batch = mlp(), data()
    with pytest.raises(ValueError, match=match):
        ft.Adam(model.parameters(), **change)
    opt = ft.Adam([{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}])
    backward(model, batch)
    opt.step()
    opt.param_groups[1].update(change)  # as a scheduler or a loaded checkpoint could
    before = snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert_unchanged(opt, before)


def test_unsupported_params_are_rejected_at_construction():
    with pytest.raises(TypeError, match="torch.float8_e4m3fn; supported: torch.float64, torch.float32, "
                                        "torch.bfloat16, torch.float16"):
        ft.SGD([torch.zeros(3, dtype=torch.float8_e4m3fn)])
    with pytest.raises(TypeError, match="torch.int64"):
        ft.Adam([torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="non-leaf"):
        ft.Adam([torch.zeros(3, requires_grad=True) * 2])
    ft.Adam([torch.zeros(3, requires_grad=True)], foreach=True)  # accepted and ignored


def test_import_fusedoptim_does_not_import_torch():
    code = "import sys, fusedoptim; fusedoptim.Adam; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_steps_through_the_numpy_views_of_the_tensors(monkeypatch):
    """The kernel receives views of the tensors' own memory, not copies."""
    seen = []
    real = fo._backends.step
    monkeypatch.setattr(fo._backends, "step",
                        lambda backend, rule, plan, params, *rest: (seen.extend(params),
                                                                     real(backend, rule, plan, params, *rest))[1])
    p = torch.randn(7, requires_grad=True)
    p.grad = torch.randn(7)
    ft.Adam([p]).step()
    assert len(seen) == 1 and seen[0].ctypes.data == p.data_ptr() and isinstance(seen[0], np.ndarray)


# Lion and LAMB have no torch.optim twin: they must equal our NumPy optimizers bit for bit.
OURS_ONLY = {"Lion": [dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, betas=(0.8, 0.9), maximize=True)],
             "Lamb": [dict(lr=0.01, weight_decay=0.05), dict(lr=0.01, maximize=True, bias_correction=False)]}
OURS_ONLY_CASES = [pytest.param(name, h, id=f"{name}-{i}") for name, grid in OURS_ONLY.items()
                   for i, h in enumerate(grid)]


def test_ours_only_signatures_are_the_numpy_optimizers():
    """The NumPy class's arguments, its own options (backend, skip_nonfinite) replaced by the torch layer's (flat)."""
    for name in OURS_ONLY:
        numpy_params = inspect.signature(getattr(fo, name)).parameters
        numpy_options = [p.name for p in _api.NUMPY_OPTIONS]
        assert list(inspect.signature(getattr(ft, name)).parameters) == \
            [p for p in numpy_params if p not in numpy_options] + ["flat"]


def assert_equals_numpy_optimizer(opt, twin):
    """Params, states and step counts of a fusedoptim.torch optimizer equal those of its fusedoptim twin."""
    params = [p for g in opt.param_groups for p in g["params"]]
    assert all(np.array_equal(p.detach().numpy(), q) for p, q in zip(params, (q for g in twin.param_groups
                                                                                for q in g["params"])))
    for i, p in enumerate(params):
        ours, theirs = opt.state[p], twin.state[i]
        assert ours.keys() == theirs.keys() and ours["step"].dtype == torch.float32
        assert all(np.array_equal(ours[k].numpy(), theirs[k]) for k in ours)


@pytest.mark.parametrize("name, hyper", OURS_ONLY_CASES)
def test_ours_only_equal_numpy_optimizers_bitwise(name, hyper):
    model, batch = mlp(), data()
    opt = getattr(ft, name)(model.parameters(), **hyper)
    twin = getattr(fo, name)([p.detach().numpy().copy() for p in model.parameters()], **hyper)
    for _ in range(30):
        opt.zero_grad()
        backward(model, batch, hyper.get("maximize", False))
        twin.step([p.grad.numpy() for p in model.parameters()])
        opt.step()
    assert_equals_numpy_optimizer(opt, twin)


@pytest.mark.parametrize("name, hyper", OURS_ONLY_CASES)
def test_ours_only_checkpoint_round_trip(name, hyper):
    """Ten steps, a checkpoint, ten more by a fresh optimizer that loaded it: as twenty straight steps."""
    def run(opt, params, steps):
        for _ in range(steps):
            g = torch.Generator().manual_seed(int(opt.state[params[0]]["step"]) if opt.state else 0)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    straight, resumed = follower(mlp()), follower(mlp())
    make = getattr(ft, name)
    uninterrupted = make(straight, **hyper)
    run(uninterrupted, straight, 20)
    before = make(resumed, **hyper)
    run(before, resumed, 10)
    saved = checkpoint(before)
    after = make(resumed, **hyper)
    after.load_state_dict(saved)
    assert after.state_dict()["param_groups"] == saved["param_groups"]
    run(after, resumed, 10)
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight))
    for a, b in zip(states(after), states(uninterrupted)):
        assert a[0] == b[0] and a[1].dtype == b[1].dtype and torch.equal(a[1], b[1])


def test_adamw_stays_decoupled_after_loading_an_adam_checkpoint():
    params = [torch.zeros(3, requires_grad=True)]
    saved = checkpoint(torch.optim.Adam(params, weight_decay=0.1))
    theirs, ours = torch.optim.AdamW(params), ft.AdamW(params)
    theirs.load_state_dict(saved)
    ours.load_state_dict(saved)
    assert ours.param_groups[0]["decoupled_weight_decay"] is True
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]
