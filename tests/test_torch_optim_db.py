"""torch's own optimizer test matrix (``optim_db`` of the pinned torch) run against every fusedoptim.torch
twin, and ports of torch's behavioural optimizer tests (test/test_optim.py, TestOptimRenewed) that apply to
CPU tensors.

Every combination either matches torch or is an intended difference, listed below with its reason:

- Trajectories: each input of ``optim_inputs_func("cpu")``, ours in float32 and in float64 teacher-forced
  by torch's float32 for-loop run (the peer) beside torch's float64 run (the truth), bounds from conftest's
  Distances. The truth takes tensor hyperparameters upcast to float64: torch computes the scalars of a
  float32 tensor lr in float32 (even for float64 params), ours are planned in double from its value, as
  every scalar is (the numerical contract); the truth is the rule's exact math at that lr.
- torch's global flags (``_get_optim_inputs_including_global_cliquey_kwargs``): ``foreach`` and ``fused``
  change nothing in ours, so each input is run once and the flags are checked to give the same bits;
  ``differentiable=True`` is rejected (INTENDED_REJECTIONS).
- Error inputs (``optim_error_inputs_func``): every one raises torch's type with a message matching torch's
  regex (a twin runs torch's own constructor on its arguments first).
"""

import copy
import functools
import io
import math
import warnings

import numpy as np
import pytest

import fusedoptim as fo

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch.testing._internal imports it
ft = pytest.importorskip("fusedoptim.torch")
from conftest import Distances, torch_default_dtype  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.testing._internal.common_optimizers import (  # noqa: E402
        OptimizerErrorEnum, _get_optim_inputs_including_global_cliquey_kwargs, optim_db)

# optim_db entries without a fusedoptim.torch class: torch optimizers that are not elementwise rules
# (LBFGS's line search, Adafactor's factored moments, Muon's orthogonalization, SparseAdam's sparse
# gradients), or rules not in the registry yet.
NOT_TWINNED = {"Adafactor", "LBFGS", "Muon", "SparseAdam", "ASGD", "Rprop"}
INFOS = [info for info in optim_db if hasattr(ft, info.name)]

# What torch accepts and ours rejects, each with its error: (what, error type, regex).
INTENDED_REJECTIONS = {
    "differentiable=True": (ValueError, "does not support differentiable=True",
                            "the kernels are not autograd ops: nothing flows back through a fused step"),
    "capturable=True": (ValueError, "does not support capturable=True",
                        "CUDA graph capture; fusedoptim steps CPU tensors, whose step counts live on the host"),
    "sparse gradient": (RuntimeError, "does not support sparse gradients",
                        "torch's Adagrad and SGD step sparse gradients; the kernels step dense memory"),
    "infinite hyperparameter": (ValueError, "must be finite",
                                "lr=inf and the like step no float param to anything but NaN or Inf"),
}


def cases():
    return list(_cases())


def _cases():
    for info in INFOS:
        for i, optim_input in enumerate(info.optim_inputs_func("cpu")):
            yield pytest.param(info, optim_input.kwargs, id=f"{info.name}-{i}-{optim_input.desc}")


def test_every_optim_db_entry_is_a_twin_or_listed():
    names = {info.name for info in optim_db}
    assert names - {info.name for info in INFOS} <= NOT_TWINNED
    assert {info.name for info in INFOS} == {name for name in names if hasattr(ft, name)}


def ours(info):
    return getattr(ft, info.name)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Trajectories against torch, with bounds from an fp64 ground truth ---

def upcast(kwargs):
    """kwargs with tensor hyperparameters in float64, for the truth."""
    def wide(v):
        if isinstance(v, torch.Tensor):
            return v.double()
        if isinstance(v, tuple):
            return tuple(map(wide, v))
        return v

    return {k: wide(v) for k, v in kwargs.items()}


def problem(dtype=torch.float32, seed=0):
    """torch's tests' problem: a (10, 5) weight and a (10,) bias, loss (weight @ x + bias)^2 summed."""
    g = torch.Generator().manual_seed(seed)
    weight, bias, x = torch.randn(10, 5, generator=g), torch.randn(10, generator=g), torch.randn(5, generator=g)
    return [weight.to(dtype).requires_grad_(), bias.to(dtype).requires_grad_()], x.to(dtype)


def loss_of(params, x):
    weight, bias = params
    return (weight.mv(x) + bias).pow(2).sum()


def tensors(opt, params):
    arrays, names = [], []
    for i, p in enumerate(params):
        arrays.append(p.detach().numpy())
        names.append(f"params[{i}]")
    for i, p in enumerate(params):
        for k, v in sorted(opt.state[p].items()):
            if k not in ("step", "mu_product"):
                arrays.append(v.numpy())
                names.append(f"{k}[{i}]")
    return arrays, names


def run_against_torch(info, kwargs, steps=20, schedulers=(), default_dtype=None):
    """``steps`` steps of torch's float32 for-loop optimizer on the problem; ours in float32 and float64,
    and torch's float64 run (the truth), take its gradients. Returns the Distances of ours32 and ours64.
    torch keeps scalar state (step, NAdam's mu_product) in its default dtype: each optimizer steps with
    its params' dtype as the default, or with ``default_dtype``."""
    maximize = kwargs.get("maximize", False)
    leader_params, x = problem()
    theirs = info.optim_cls(leader_params, **{**kwargs, "foreach": False})
    followers = {dtype: [p.detach().to(dtype, copy=True).requires_grad_() for p in leader_params]
                 for dtype in (torch.float32, torch.float64)}
    exact_params = [p.detach().double().requires_grad_() for p in leader_params]
    mine = {dtype: ours(info)(params, **kwargs) for dtype, params in followers.items()}
    exact = info.optim_cls(exact_params, **{**upcast(kwargs), "foreach": False})
    everyone = [theirs, *mine.values(), exact]
    scheduled = [[make(opt) for make in schedulers] for opt in everyone]
    distances = {dtype: Distances() for dtype in mine}
    for _ in range(steps):
        theirs.zero_grad()
        loss = loss_of(leader_params, x)
        (-loss if maximize else loss).backward()
        for params in [*followers.values(), exact_params]:
            for p, q in zip(leader_params, params):
                q.grad = p.grad.to(q.dtype, copy=True)
        theirs.step()
        for opt in everyone[1:]:
            with torch_default_dtype(default_dtype or opt.param_groups[0]["params"][0].dtype):
                opt.step()
        for opt, its in zip(everyone, scheduled):
            for s in its:
                s.step(loss.item()) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
        truth, names = tensors(exact, exact_params)
        peer, peer_names = tensors(theirs, leader_params)
        for dtype, opt in mine.items():
            arrays, my_names = tensors(opt, followers[dtype])
            assert my_names == names == peer_names, "the state is torch's"
            distances[dtype].record(arrays, peer, truth, names)
    lrs = [[g["lr"] for g in opt.param_groups] for opt in everyone]
    assert all(lr == lrs[0] for lr in lrs), "the schedulers moved every lr alike"
    return distances


@pytest.mark.parametrize("info, kwargs", cases())
def test_trajectory_matches_torch(info, kwargs):
    for distances in run_against_torch(info, kwargs).values():
        distances.check()


@pytest.mark.parametrize("info, kwargs", [case for case in cases() if case.values[0].name == "NAdam"])
def test_host_state_is_kept_in_torchs_scalar_dtype(info, kwargs):
    """With float32 the default dtype, torch keeps NAdam's mu_product in float32 for float64 params too,
    and multiplies it there: the float64 truth then takes the same rounded products, and ours must follow
    them to the float64 bound (a product taken in double drifts 1e-11 a step from it, 1000 times that)."""
    for distances in run_against_torch(info, kwargs, default_dtype=torch.float32).values():
        distances.check()


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_lr_schedulers_of_optim_db(info):
    """Each optimizer's scheduler inputs (StepLR, ReduceLROnPlateau; more for some), on its default input."""
    for schedulers in info.scheduler_inputs:
        for distances in run_against_torch(info, {}, schedulers=schedulers).values():
            distances.check()


# --- torch's global flags ---

def run(info, kwargs, steps=5, params=None, seed=0):
    """``steps`` steps of ours on the problem (or ``params``); returns the params and the optimizer."""
    if params is None:
        params, x = problem(seed=seed)
    else:
        x = None
    opt = ours(info)(params, **kwargs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
    return params, opt


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1), b.view(-1))


def same_state(a, b):
    """Two state_dicts equal: tensors bit for bit, the rest by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and same_bits(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_foreach_and_fused_change_nothing_and_are_kept(info):
    impls = [flag for flag in info.supported_impls if flag in ("foreach", "fused")]
    for optim_input in info.optim_inputs_func("cpu"):
        kwargs = optim_input.kwargs
        baseline, _ = run(info, kwargs)
        for flag in impls:
            for value in (False, True):
                if flag == "foreach" and value and isinstance(kwargs.get("lr"), torch.Tensor):
                    continue  # torch rejects a tensor lr with foreach=True; so do ours (test_error_inputs)
                params, opt = run(info, {**kwargs, flag: value})
                assert all(same_bits(a, b) for a, b in zip(params, baseline)), (optim_input.desc, flag, value)
                loaded = ours(info)(problem()[0], **kwargs)
                loaded.load_state_dict(copy.deepcopy(opt.state_dict()))
                assert loaded.param_groups[0][flag] is value


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_differentiable_is_an_intended_rejection(info):
    error, match, _ = INTENDED_REJECTIONS["differentiable=True"]
    with pytest.raises(error, match=match):
        ours(info)(problem()[0], differentiable=True)


@pytest.mark.parametrize("info", [i for i in INFOS if i.has_capturable_arg], ids=lambda info: info.name)
def test_capturable_is_an_intended_rejection(info):
    error, match, _ = INTENDED_REJECTIONS["capturable=True"]
    with pytest.raises(error, match=match):
        ours(info)(problem()[0], capturable=True)


@pytest.mark.parametrize("info", [i for i in INFOS if i.supports_sparse], ids=lambda info: info.name)
def test_sparse_gradients_are_an_intended_rejection(info):
    error, match, _ = INTENDED_REJECTIONS["sparse gradient"]
    params, _ = problem()
    opt = ours(info)(params)
    for p in params:
        p.grad = torch.ones_like(p).to_sparse()
    with pytest.raises(error, match=match):
        opt.step()


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
def test_infinite_lr_is_an_intended_rejection(info):
    error, match, _ = INTENDED_REJECTIONS["infinite hyperparameter"]
    with pytest.raises(error, match=match):
        ours(info)(problem()[0], lr=math.inf)


TORCH_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def by_value(v):
    """A hyperparameter as the NumPy layer takes it: a tensor (or a tuple of them) by its value."""
    if isinstance(v, torch.Tensor):
        return v.item()
    return tuple(map(by_value, v)) if isinstance(v, tuple) else v


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_params_step_as_the_reference(info, dtype):
    """Every optim_db input on float16 and bfloat16 params, with state in their dtype as torch keeps it:
    ours steps them bit for bit as the NumPy reference steps the same values (torch's scalar state in
    float64, as the reference keeps it on the host)."""
    import ml_dtypes

    storage = {torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16}[dtype]

    def array(t):
        t = t.detach()
        return (t.view(torch.int16).numpy().view(storage) if dtype == torch.bfloat16 else t.numpy()).copy()

    for optim_input in info.optim_inputs_func("cpu"):
        kwargs = optim_input.kwargs
        if kwargs.get("capturable") or kwargs.get("differentiable"):
            continue  # intended rejections
        half = [p.detach().to(dtype).requires_grad_() for p in problem()[0]]
        arrays = [array(p) for p in half]
        reference = getattr(fo, info.name)(arrays, backend="numpy",
                                           **{k: by_value(v) for k, v in kwargs.items() if k not in TORCH_FLAGS})
        with torch_default_dtype(torch.float64):
            opt = ours(info)(half, **copy.deepcopy(kwargs))
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                for p in half:
                    p.grad = torch.randn(p.shape, generator=g).to(dtype)
                opt.step()
                reference.step([array(p.grad) for p in half])
        for p, expected in zip(half, arrays):
            assert np.array_equal(array(p).view(np.int16), expected.view(np.int16)), optim_input.desc


# --- torch's error inputs ---

def error_cases():
    return list(_error_cases())


def _error_cases():
    for info in INFOS:
        for error_input in info.optim_error_inputs_func("cpu", torch.float32):
            yield pytest.param(info, error_input, id=f"{info.name}-{error_input.optimizer_error_input.desc}")


@pytest.mark.parametrize("info, error_input", error_cases())
def test_error_inputs_raise_torchs_errors(info, error_input):
    optim_input = error_input.optimizer_error_input
    params = optim_input.params if optim_input.params is not None else problem()[0]
    if issubclass(error_input.error_type, Warning):
        raising = pytest.warns(error_input.error_type, match=error_input.error_regex)
    else:
        raising = pytest.raises(error_input.error_type, match=error_input.error_regex)
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with raising:
            ours(info)(params, **optim_input.kwargs)
    else:
        opt = ours(info)(params, **optim_input.kwargs)
        with raising:
            opt.step()


# --- Complex params: as the pairs of reals torch steps them as ---

@pytest.mark.parametrize("info", [i for i in INFOS if i.supports_complex], ids=lambda info: info.name)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_params_step_as_their_real_views(info, dtype):
    """torch's test_complex: complex params (and a real one beside them) step bit for bit as their
    view_as_real copies; and ours stay within the bound of torch's own complex run."""
    real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64
    for optim_input in info.optim_inputs_func("cpu"):
        g = torch.Generator().manual_seed(0)
        complex_params = [torch.randn(10, 5, dtype=dtype, generator=g), torch.randn(10, dtype=dtype, generator=g),
                          torch.randn(10, 5, dtype=real_dtype, generator=g)]
        real_params = [torch.view_as_real(p).clone() if p.is_complex() else p.clone() for p in complex_params]
        theirs = [p.clone() for p in complex_params]
        for group in (complex_params, real_params, theirs):
            for p in group:
                p.requires_grad_()
        a, b = ours(info)(complex_params, **optim_input.kwargs), ours(info)(real_params, **optim_input.kwargs)
        c = info.optim_cls(theirs, **{**optim_input.kwargs, "foreach": False})
        for _ in range(3):
            for p, q, r in zip(complex_params, real_params, theirs):
                q.grad = torch.randn(q.shape, dtype=q.dtype, generator=g)
                p.grad = torch.view_as_complex(q.grad.clone()) if p.is_complex() else q.grad.clone()
                r.grad = p.grad.clone()
            a.step(), b.step(), c.step()
        for p, q, r in zip(complex_params, real_params, theirs):
            as_real = torch.view_as_real(p.detach()) if p.is_complex() else p.detach()
            assert same_bits(as_real, q.detach()), optim_input.desc
            assert torch.allclose(p.detach(), r.detach(), rtol=1e-5 if real_dtype == torch.float32 else 1e-12,
                                  atol=0), optim_input.desc
        for p, q in zip(complex_params, real_params):
            for k, v in a.state[p].items():
                v = torch.view_as_real(v) if v.is_complex() else v
                assert same_bits(v, b.state[q][k]), (optim_input.desc, k)


@pytest.mark.parametrize("info", [i for i in INFOS if i.supports_complex], ids=lambda info: info.name)
def test_complex_2d_steps_as_its_real_and_imaginary_parts(info):
    """torch's test_complex_2d: a complex param and its real and imaginary parts as two params."""
    for optim_input in info.optim_inputs_func("cpu"):
        g = torch.Generator().manual_seed(1)
        a1 = torch.randn(2, dtype=torch.complex64, generator=g, requires_grad=True)
        re, im = a1.real.detach().clone().requires_grad_(), a1.imag.detach().clone().requires_grad_()
        opt1, opt2 = ours(info)([a1], **optim_input.kwargs), ours(info)([re, im], **optim_input.kwargs)
        for _ in range(3):
            grad = torch.randn(2, dtype=torch.complex64, generator=g)
            a1.grad, re.grad, im.grad = grad, grad.real.clone(), grad.imag.clone()
            opt1.step(), opt2.step()
            assert same_bits(a1.real.detach().contiguous(), re.detach()), optim_input.desc
            assert same_bits(a1.imag.detach().contiguous(), im.detach()), optim_input.desc


# --- Ports of torch's behavioural tests (TestOptimRenewed), on every twin and every input ---

def all_inputs(info):
    """torch's inputs with the global flags ours accept (``differentiable`` is an intended rejection), for
    the tests whose subject is the flags' bookkeeping (hooks, state_dicts, copies)."""
    return [i for i in _get_optim_inputs_including_global_cliquey_kwargs("cpu", torch.float32, info,
                                                                         skip=("differentiable",))]


BEHAVIOUR = [pytest.param(info, id=info.name) for info in INFOS]


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_goes_the_right_direction_with_and_without_lr_schedulers(info):
    """torch's test_forloop_goes_right_direction, contiguous and not, with its schedulers, and
    test_param_groups_weight_decay / test_param_groups_lr."""
    for optim_input in info.optim_inputs_func("cpu"):
        kwargs = optim_input.kwargs
        for contiguous, schedules in ((True, [()] + list(info.scheduler_inputs)), (False, [()])):
            for schedulers in schedules:  # a layout and a schedule do not interact: not every pair is run
                g = torch.Generator().manual_seed(0)
                if contiguous:
                    weight, bias = torch.randn(10, 5, generator=g), torch.randn(10, generator=g)
                else:
                    weight, bias = torch.randn(10, 5, 2, generator=g)[..., 0], torch.randn(10, 2, generator=g)[..., 0]
                params = [weight.requires_grad_(), bias.requires_grad_()]
                x = torch.randn(5, generator=g)
                opt = ours(info)(params, **copy.deepcopy(kwargs))
                its = [make(opt) for make in schedulers]
                initial = loss_of(params, x).item()
                for _ in range(20):
                    opt.zero_grad()
                    loss = loss_of(params, x)
                    loss.backward()
                    opt.step()
                    for s in its:
                        s.step(loss.item()) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
                final = loss_of(params, x).item()
                assert (final > initial) if kwargs.get("maximize") else (final < initial), optim_input.desc
        # Two groups: one without weight decay; and an outer lr of 1e-28 that leaves the other group as it was.
        params, x = problem()
        irrelevant = torch.randn(2, requires_grad=True)
        before = irrelevant.detach().clone()
        opt = ours(info)([dict(params=params[:1], **kwargs), dict(params=params[1:], **{**kwargs, "weight_decay": 0.0}),
                          dict(params=[irrelevant])], lr=1e-28)
        for _ in range(3):
            opt.zero_grad()
            loss_of(params, x).backward()
            irrelevant.grad = torch.rand_like(irrelevant)
            opt.step()
        # Rprop's step size starts at step_sizes[0] whatever lr, and grows by at most etas[1] a step; each
        # step rounds the param once (torch's test compares with its float32 tolerance, which this passes)
        bound = 0.0
        if "step_sizes" in opt.defaults:
            growth = opt.defaults["etas"][1]
            bound = opt.defaults["step_sizes"][0] * sum(growth ** k for k in range(3)) + \
                3 * torch.finfo(torch.float32).eps * before.abs().max().item()
        assert (irrelevant - before).abs().max().item() <= bound


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_tensor_lr_steps_as_its_value(info):
    """torch's test_tensor_lr: a 0-d tensor lr steps as the float of the same value (bitwise, here)."""
    for optim_input in info.optim_inputs_func("cpu"):
        kwargs = {k: v for k, v in optim_input.kwargs.items() if k != "lr"}
        a, _ = run(info, {**kwargs, "lr": 1e-3})
        b, _ = run(info, {**kwargs, "lr": torch.tensor(1e-3)})
        c, _ = run(info, {**kwargs, "lr": float(torch.tensor(1e-3))})
        assert all(same_bits(x, y) for x, y in zip(b, c)), optim_input.desc
        assert all(torch.allclose(x, y, rtol=1e-5) for x, y in zip(a, b)), optim_input.desc


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_params_without_grads_and_zero_grads(info):
    """test_step_is_noop_when_params_have_no_grad, test_step_is_noop_for_zero_grads, test_non_empty_state."""
    for optim_input in all_inputs(info):
        kwargs = optim_input.kwargs
        params = [torch.randn(2, 3) for _ in range(2)]
        old = [p.clone() for p in params]
        opt = ours(info)(params, **kwargs)
        assert opt.step(lambda: torch.tensor([1.0])).item() == 1.0
        assert all(torch.equal(p, q) for p, q in zip(params, old))
        if kwargs.get("weight_decay", 0) == 0 and info.name != "ASGD":  # ASGD decays whatever the grad (torch skips it)
            param = torch.randn(5, 1, requires_grad=True)
            old = param.detach().clone()
            lr = 1e-5 if info.name == "AdamW" else kwargs.get("lr", None)
            opt = ours(info)([param], **({**kwargs, "lr": lr} if lr is not None else kwargs))
            param.grad = torch.zeros_like(param)
            opt.step()
            decay = opt.defaults["lr"] * opt.defaults.get("weight_decay", 0.0)  # AdamW's default decay: 1e-7 of the param
            assert torch.equal(param, old) if decay == 0 else torch.allclose(param, old, rtol=2 * decay, atol=0)
        model = torch.nn.Linear(5, 5)
        opt = ours(info)(model.parameters(), **kwargs)
        model(torch.rand(2, 5)).sum().backward()
        opt.step()
        assert all(len(state) > 0 for state in opt.state.values()), optim_input.desc


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_empty_and_zero_size_params(info):
    """An empty param list raises torch's error; zero-size params and 0-d params step beside the others."""
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        ours(info)([])
    params = [torch.randn(3, 2, requires_grad=True), torch.empty(0, 4, requires_grad=True),
              torch.randn((), requires_grad=True)]
    for optim_input in info.optim_inputs_func("cpu"):
        run(info, optim_input.kwargs, params=[p.detach().clone().requires_grad_() for p in params])


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_state_dict_is_deterministic_and_loads(info):
    """test_state_dict_deterministic (named params too), test_can_load_older_state_dict,
    test_load_nontensor_step, test_can_load_from_to_named_state_dict. On torch's inputs without the
    global flags, which change no bits of ours (test_foreach_and_fused_change_nothing_and_are_kept)."""
    for optim_input in info.optim_inputs_func("cpu"):
        kwargs = optim_input.kwargs
        for named0, named1 in [(False, False), (True, False), (False, True)]:
            params, x = problem()

            def closure(opt, ps):
                opt.zero_grad()
                loss = loss_of(ps, x)
                loss.backward()
                return loss

            named = (lambda ps, on: [(f"name{i}", p) for i, p in enumerate(ps)] if on else ps)
            opt = ours(info)(named(params, named0), **kwargs)
            for _ in range(10):
                opt.step(functools.partial(closure, opt, params))
            copies = [p.detach().clone().requires_grad_() for p in params]
            opt_c = ours(info)(named(copies, named1), **kwargs)
            opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))
            for _ in range(10):
                opt.step(functools.partial(closure, opt, params))
                opt_c.step(functools.partial(closure, opt_c, copies))
                assert all(same_bits(a.detach(), b.detach()) for a, b in zip(params, copies)), optim_input.desc

            def without_names(sd):
                sd = copy.deepcopy(sd)
                for group in sd["param_groups"]:
                    group.pop("param_names", None)
                return sd

            assert same_state(without_names(opt.state_dict()), without_names(opt_c.state_dict()))
            if named0 or named1:
                assert opt_c.state_dict()["param_groups"][0]["param_names"] == ["name0", "name1"]
            opt_c.param_groups.extend(opt_c.param_groups)
            assert same_state(without_names(opt.state_dict())["param_groups"][-1],
                              without_names(opt_c.state_dict())["param_groups"][-1])
        # Older checkpoints: without the flags added since, and with a Python number as step.
        old = copy.deepcopy(opt.state_dict())
        for group in old["param_groups"]:
            for flag in info.not_og_supported_flags:
                group.pop(flag, None)
        for state in old["state"].values():
            if "step" in state:
                state["step"] = state["step"].item()
        opt.load_state_dict(old)
        opt.step(functools.partial(closure, opt, params))
        assert all(torch.is_tensor(s["step"]) for s in opt.state.values() if "step" in s)


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_save_load_with_weights_only(info):
    """test_save_load_equality_with_weights_only: the state_dict survives torch.save and a
    weights_only torch.load unchanged."""
    for optim_input in all_inputs(info):
        params, opt = run(info, optim_input.kwargs, steps=3)
        sd = opt.state_dict()
        for weights_only in (False, True):
            buffer = io.BytesIO()
            torch.save(sd, buffer)
            buffer.seek(0)
            assert same_state(torch.load(buffer, weights_only=weights_only), sd), optim_input.desc


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_state_dict_and_load_state_dict_hooks(info):
    """test_state_dict_pre_hook, _post_hook, _pre_post_hook; test_load_state_dict_pre_hook_and_prepend,
    _post_hook, _pre_post_hook: hooks that store non-tensor state (state['test'] = 1) included."""
    def pre(opt):
        opt.state["test"] = 1

    def post(opt, sd):
        ran = "test" in sd["state"]
        sd["state"].pop("test", None)
        sd["ran_state_dict_pre_hook"] = ran
        return sd

    def load_pre1(opt, sd):
        sd["param_groups"][0]["lr"] = 0.002

    def load_pre2(opt, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.003
        return sd

    def load_post(opt):
        opt.state["ran_load_state_dict_pre_hook2"] = opt.param_groups[0]["lr"] == 0.003
        opt.state["ran_load_state_dict_post_hook"] = True

    for optim_input in all_inputs(info):
        def fresh():
            return ours(info)([torch.rand(2, 3, requires_grad=True)], **optim_input.kwargs)

        opt = fresh()
        opt.register_state_dict_pre_hook(pre)
        assert opt.state_dict()["state"]["test"] == 1
        opt = fresh()
        opt.register_state_dict_post_hook(post)
        assert opt.state_dict()["ran_state_dict_pre_hook"] is False
        opt = fresh()
        opt.register_state_dict_pre_hook(pre)
        opt.register_state_dict_post_hook(post)
        sd = opt.state_dict()
        assert "test" not in sd["state"] and sd["ran_state_dict_pre_hook"]

        opt = fresh()
        sd = opt.state_dict()
        opt.register_load_state_dict_pre_hook(load_pre1)
        opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.002
        opt.register_load_state_dict_pre_hook(load_pre2, prepend=True)
        opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.002
        opt = fresh()
        opt.register_load_state_dict_post_hook(load_post)
        opt.load_state_dict(opt.state_dict())
        assert not opt.state["ran_load_state_dict_pre_hook2"] and opt.state["ran_load_state_dict_post_hook"]
        opt = fresh()
        opt.register_load_state_dict_pre_hook(load_pre2)
        opt.register_load_state_dict_post_hook(load_post)
        opt.load_state_dict(opt.state_dict())
        assert opt.state["ran_load_state_dict_pre_hook2"] and opt.state["ran_load_state_dict_post_hook"]
        # A state_dict holding the hooks' non-tensor state loads, and the optimizer still steps.
        opt = fresh()
        opt.state["test"] = 1
        loaded = fresh()
        loaded.load_state_dict(opt.state_dict())
        assert loaded.state["test"] == 1
        p = loaded.param_groups[0]["params"][0]
        p.grad = torch.ones_like(p)
        loaded.step()


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_step_hooks(info):
    """test_step_pre_hook, test_step_post_hook, test_step_all_hooks."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    for optim_input in all_inputs(info):
        params = [torch.tensor([1.0, 1.0])]
        opt, other = ours(info)(params, **optim_input.kwargs), torch.optim.SGD(params)
        data = []
        handles = [register_optimizer_step_pre_hook(lambda *a: data.append(0)),
                   register_optimizer_step_post_hook(lambda *a: data.append(5))]
        for o in (opt, other):
            handles += [o.register_step_pre_hook(lambda *a: data.append(1)),
                        o.register_step_post_hook(lambda *a: data.append(2))]
        try:
            opt.step()
            other.step()
            opt.step()
        finally:
            for handle in handles:
                handle.remove()
        opt.step()
        assert data == [0, 1, 2, 5] * 3, optim_input.desc


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_deepcopy_and_printing(info):
    """test_deepcopy_copies_all_public_attrs, test_optimizer_can_be_printed; the copy steps on its own."""
    for optim_input in all_inputs(info):
        params, opt = run(info, optim_input.kwargs, steps=3)
        clone = copy.deepcopy(opt)
        public = {k for k in opt.__dict__ if not k.startswith("_")}
        assert public == {k for k in clone.__dict__ if not k.startswith("_")}
        assert repr(opt).startswith(info.name + " (")
        cloned_params = clone.param_groups[0]["params"]
        for p, q in zip(params, cloned_params):
            q.grad = p.grad.clone()
        before = [p.detach().clone() for p in params]
        clone.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before))  # the original did not move
        assert not all(torch.equal(q, b) for q, b in zip(cloned_params, before))


@pytest.mark.parametrize("info", BEHAVIOUR)
def test_params_made_on_meta_step_once_materialized(info):
    """test_fused_error_on_params_on_meta, then deferred initialization: the optimizer is built on meta
    params; a step while they are on meta raises torch's fused error; materialized in place
    (to_empty, with params swapped in place, as FSDP2 keeps them), they step as if made on the CPU."""
    fused = {"fused": True} if "fused" in info.supported_impls else {}

    def made(device):
        torch.manual_seed(0)
        with torch.device(device):
            return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))

    reference, model = made("cpu"), made("meta")
    expected = ours(info)(reference.parameters(), **fused)
    opt = ours(info)(model.parameters(), **fused)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        opt.step()
    assert not any(opt.state[p].get("step") for p in params)
    opt.zero_grad(set_to_none=True)
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to_empty(device="cpu")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    assert all(p is q for p, q in zip(params, model.parameters()))
    model.load_state_dict(reference.state_dict())
    x = torch.rand(4, 2)
    for net, o in ((reference, expected), (model, opt)):
        for _ in range(3):
            o.zero_grad()
            net(x).sum().backward()
            o.step()
    assert all(torch.equal(p, q) for p, q in zip(reference.parameters(), model.parameters()))


@pytest.mark.parametrize("info", [i for i in INFOS if "cpu" in i.supports_fused_on], ids=lambda info: info.name)
def test_checkpoints_of_torchs_fused_optimizers_load_both_ways(info):
    """torch's own fused CPU optimizer's state_dict loads into ours (fused=True, the same arguments) and
    steps; ours loads back into torch's fused optimizer, which steps too; the flag and step dtype survive."""
    for optim_input in info.optim_inputs_func("cpu"):
        kwargs = {**optim_input.kwargs, "fused": True}
        params, theirs = problem()[0], None
        theirs = info.optim_cls(params, **kwargs)
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            theirs.step()
        mine = ours(info)(params, **kwargs)
        mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
        mine.step()
        assert mine.state_dict()["param_groups"][0]["fused"] is True
        back = info.optim_cls(params, **kwargs)
        back.load_state_dict(copy.deepcopy(mine.state_dict()))
        back.step()
        for state in back.state.values():
            if "step" in state:
                assert state["step"].dtype == torch.float32 and float(state["step"]) == 4, optim_input.desc
