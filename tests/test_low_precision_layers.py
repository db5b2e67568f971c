"""Low-precision storage in the stateful layers: every optimizer, NumPy classes and fusedoptim.torch,
steps bfloat16 and float16 params with states in the param's dtype or in float32 (``state_dtype``),
bit for bit as the functional step on the same storage; fusedoptim.torch in bfloat16 against
torch's own fused Adam, within a derived bound; checkpoints between the two."""

import copy

import ml_dtypes
import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim._rules import OPTIMIZERS as SPECS

from conftest import BF16, F16, F32, EVERY_STATE_KWARGS as KWARGS, assert_bitwise_equal

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedoptim.torch")

TORCH_DTYPES = {BF16: torch.bfloat16, F16: torch.float16}


def test_every_optimizer_is_in_the_table():
    assert set(KWARGS) == set(SPECS)


def start(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in ((5, 7), (13,), (1,))]


def grads(params, step):
    return [np.sin(p.astype(np.float32) * step + 1).astype(p.dtype) for p in params]


def functional_run(spec, params, state_dtype, steps):
    """The optimizer's steps as functional calls on arrays stored as the stateful layers store them."""
    rule, kwargs = spec.rule, KWARGS[spec.name]
    hyper = {k: v for k, v in kwargs.items() if k not in rule.initial.values()}
    states = [[np.full(p.shape, kwargs[s.initial] if s.initial else 0.0, state_dtype or p.dtype) for p in params]
              for s in rule.states]
    host = dict(zip(rule.host_states, rule.host_start(kwargs)))
    for step in range(1, steps + 1):
        counted = {"step": step} if rule.step else {}
        returned = getattr(fo, spec.functional)(params, grads(params, step), *states, **hyper, **counted, **host,
                                                backend="numpy")
        if host:
            host = dict(zip(host, returned if isinstance(returned, tuple) else (returned,)))
    return params, states


@pytest.mark.parametrize("state_dtype", [None, "float32"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("name", list(SPECS))
def test_stateful_layers_step_low_precision_as_the_functional_reference(name, dtype, state_dtype):
    spec = SPECS[name]
    expected, states = functional_run(spec, start(dtype), state_dtype and np.float32, steps=3)

    ours = start(dtype)
    opt = getattr(fo, name)(ours, **KWARGS[name], state_dtype=state_dtype)
    tensors = [torch.from_numpy(p.view(np.int16).copy()).view(TORCH_DTYPES[dtype]).requires_grad_() for p in
               start(dtype)]
    topt = getattr(ft, name)(tensors, **KWARGS[name], state_dtype=state_dtype)
    for step in range(1, 4):
        opt.step(grads(ours, step))
        for t, g in zip(tensors, grads(start(dtype), step) if step == 1 else grads(as_arrays(tensors), step)):
            t.grad = torch.from_numpy(g.view(np.int16).copy()).view(t.dtype)
        topt.step()
    want = np.dtype(np.float32) if state_dtype else dtype
    for i, (e, p, t) in enumerate(zip(expected, ours, as_arrays(tensors))):
        assert_bitwise_equal(p, e, f"{name} numpy params[{i}]")
        assert_bitwise_equal(t, e, f"{name} torch params[{i}]")
        for s, slot in zip(spec.rule.states, states):
            if s.name in opt.state[i]:
                assert opt.state[i][s.name].dtype == want
                assert_bitwise_equal(opt.state[i][s.name], slot[i], f"{name} numpy {s.name}[{i}]")
                theirs = topt.state[tensors[i]][s.name]
                assert theirs.dtype == (torch.float32 if state_dtype else TORCH_DTYPES[dtype])
                assert_bitwise_equal(as_arrays([theirs])[0], slot[i], f"{name} torch {s.name}[{i}]")


def as_arrays(tensors):
    """NumPy copies of low-precision (or float32) tensors."""
    out = []
    for t in tensors:
        t = t.detach()
        if t.dtype == torch.bfloat16:
            out.append(t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy())
        else:
            out.append(t.numpy().copy())
    return out


@pytest.mark.parametrize("layer", ["numpy", "torch"])
def test_state_dtype_rejects_anything_but_float32(layer):
    cls = fo.Adam if layer == "numpy" else ft.Adam
    param = np.zeros(3, np.float32) if layer == "numpy" else torch.zeros(3, requires_grad=True)
    for bad in ("bfloat16", np.float64, "float", 32):
        with pytest.raises(ValueError, match=r"Invalid state_dtype: .* \(None: each param's dtype; or float32\)"):
            cls([param], state_dtype=bad)


def test_numpy_checkpoint_keeps_float32_state():
    params = start(BF16)
    opt = fo.Adam(params, lr=0.01, state_dtype="float32")
    opt.step(grads(params, 1))
    saved = opt.state_dict()
    again = fo.Adam(start(BF16), lr=0.01, state_dtype=np.float32)
    again.load_state_dict(saved)
    for i in range(len(params)):
        for name in ("exp_avg", "exp_avg_sq"):
            assert again.state[i][name].dtype == F32
            assert_bitwise_equal(again.state[i][name], saved["state"][i][name])


# --- fusedoptim.torch in bfloat16 against torch's fused Adam ---
#
# Both step the same bf16 values: each widens them to float32 exactly, computes the update in float32
# and rounds each stored value (param, exp_avg, exp_avg_sq, max_exp_avg_sq) once to bf16, to nearest even.
# Only the float32 op order differs (torch: lerp for exp_avg, its own association of the update). So
# before the last rounding the two float32 values x (ours) and y (torch's) differ by at most the
# float32 rounding errors of both paths. Each path rounds at most K = 8 times, each time by at most
# half a float32 ulp, u = 2^-24 relative, of a value no larger than the terms summed in the last
# operation, S (|param| + |update| for the param, |exp_avg| + |(1 - beta1) g| for exp_avg, |exp_avg_sq|
# + |(1 - beta2) g^2| for exp_avg_sq); errors in the update's inputs reach it scaled by at most 1
# (each op is a product, a quotient, a square root or a sum of same-sign terms), so
#     |x - y| <= 2 K u S = 2^-20 S.
# Rounding both to bf16 moves each by at most half a bf16 ulp, to the grid: so the stored values differ
# by at most |x - y| + 1 bf16 ulp of the larger. Teacher forcing keeps every step's inputs identical:
# torch starts each step from our values, so differences cannot compound.
TORCH_CONFIGS = [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1), dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
                 dict(lr=1e-3, betas=(0.8, 0.99), maximize=True)]


def bf16_ulp(x):
    """One bf16 ulp at |x| (the smallest subnormal's step below the normal range)."""
    x = np.abs(np.asarray(x, np.float64))
    exponent = np.floor(np.log2(np.maximum(x, 2.0**-126)))
    return 2.0 ** (exponent - 7)


def f64(t):
    return t.detach().to(torch.float64).numpy()


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=str)
def test_bf16_adam_agrees_with_torch_fused_within_the_derived_bound(config, decoupled):
    against_torch_fused(config, decoupled)


@pytest.mark.parametrize("wrong", [dict(lr=1e-2 * (1 + 2.0**-5)), dict(eps=1e-6), dict(betas=(0.9, 0.998))], ids=str)
def test_guard_the_bound_catches_a_slightly_wrong_step(wrong):
    with pytest.raises(AssertionError):
        against_torch_fused(dict(lr=1e-2), False, wrong)


def against_torch_fused(config, decoupled, wrong=None):
    """Teacher-forced steps of ours and torch's fused Adam from identical bf16 inputs, each result
    within the bound above; ``wrong`` overrides our hyperparameters (for the guard)."""
    cls, ours_cls = (torch.optim.AdamW, ft.AdamW) if decoupled else (torch.optim.Adam, ft.Adam)
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 33), (1000,), (3,)]
    ours = [torch.randn(s, generator=gen).to(torch.bfloat16).requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt, ref = ours_cls(ours, **{**config, **(wrong or {})}), cls(theirs, **config, fused=True)
    differing = 0
    for step in range(1, 31):
        for a, b in zip(ours, theirs):
            scale = 10.0 ** float(torch.randint(-3, 2, (), generator=gen))
            a.grad = (torch.randn(a.shape, generator=gen) * scale).to(torch.bfloat16)
            b.grad = a.grad.clone()
            with torch.no_grad():
                b.copy_(a)  # teacher forcing: torch starts every step from our values
            for name, value in opt.state[a].items() if step > 1 else ():
                ref.state[b][name].copy_(value)
        before = {id(a): (f64(a), *(f64(opt.state[a][n]) for n in ("exp_avg", "exp_avg_sq"))) if step > 1 else
                  (f64(a), 0.0, 0.0) for a in ours}
        opt.step()
        ref.step()
        beta1, beta2 = config.get("betas", (0.9, 0.999))
        for a, b in zip(ours, theirs):
            p0, m0, v0 = before[id(a)]
            g = f64(a.grad) * (-1 if config.get("maximize") else 1)
            m, v = f64(opt.state[a]["exp_avg"]), f64(opt.state[a]["exp_avg_sq"])
            scales = {"param": np.abs(p0) + np.abs(f64(a) - p0) + np.abs(config.get("weight_decay", 0) * p0),
                      "exp_avg": np.abs(m0) + np.abs((1 - beta1) * g) + np.abs(m),
                      "exp_avg_sq": np.abs(v0) + np.abs((1 - beta2) * g * g) + np.abs(v)}
            pairs = {"param": (a, b), "exp_avg": (opt.state[a]["exp_avg"], ref.state[b]["exp_avg"]),
                     "exp_avg_sq": (opt.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"])}
            if config.get("amsgrad"):
                pairs["max_exp_avg_sq"] = (opt.state[a]["max_exp_avg_sq"], ref.state[b]["max_exp_avg_sq"])
                scales["max_exp_avg_sq"] = scales["exp_avg_sq"]
            for name, (x, y) in pairs.items():
                assert x.dtype == y.dtype == torch.bfloat16, name
                x, y = f64(x), f64(y)
                limit = 2.0**-20 * scales[name] + bf16_ulp(np.maximum(np.abs(x), np.abs(y)))
                assert np.all(np.abs(x - y) <= limit), (name, step, float(np.max(np.abs(x - y) - limit)))
                differing += int(np.count_nonzero(x != y))
    assert differing < 0.05 * 30 * sum(np.prod(s) for s in shapes)  # mostly bitwise equal: the same math


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_checkpoints_load_in_torch_and_back(dtype):
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(40, generator=gen).to(dtype).requires_grad_() for _ in range(2)]
    ours = ft.Adam(params, lr=1e-2, amsgrad=True)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        ours.step()
    theirs = torch.optim.Adam([p.detach().clone().requires_grad_() for p in params], lr=1e-2, amsgrad=True)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # a live state_dict shares the state tensors
    back = ft.Adam([p.detach().clone().requires_grad_() for p in params], lr=1e-2, amsgrad=True)
    back.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for mine, loaded, p, q in zip(ours.state.values(), back.state.values(), params, back.param_groups[0]["params"]):
        assert set(mine) == set(loaded)
        for name in mine:
            assert loaded[name].dtype == mine[name].dtype
            assert torch.equal(loaded[name], mine[name]), name
    # and the loaded optimizer steps on as ours does
    for p, q in zip(params, back.param_groups[0]["params"]):
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        q.grad = p.grad.clone()
    ours.step()
    back.step()
    for p, q in zip(params, back.param_groups[0]["params"]):
        assert torch.equal(p, q)


def test_torch_grads_of_another_dtype_step_as_the_functional():
    """torch lets a param's gradient have another dtype (grad_dtype=None): a float32 param with a
    bfloat16 gradient steps as the functional step on the same arrays."""
    p = torch.randn(50, generator=torch.Generator().manual_seed(2))
    g = torch.randn(50, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    expected = p.numpy().copy()
    m, v = np.zeros(50, np.float32), np.zeros(50, np.float32)
    fo.adam_(expected, as_arrays([g])[0], m, v, step=1, lr=1e-2, backend="numpy")
    p.requires_grad_()
    p.grad_dtype = None
    p.grad = g
    ft.Adam([p], lr=1e-2).step()
    assert_bitwise_equal(p.detach().numpy(), expected)
