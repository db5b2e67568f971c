"""Trajectories against torch.optim: same semantics, defaults and state names, many steps.

Op order may differ from torch's (torch's CPU kernels use FMA and lerp; ours round every op
of reference.py), so results agree to a tolerance rather than bitwise: the largest difference
over an array, relative to the array's largest magnitude, after every step. Elementwise
relative error is not used: where ``param - update`` cancels to almost zero, one ulp of the
update is an arbitrarily large fraction of the result.
"""

import numpy as np
import pytest

import fusedoptim as fo

torch = pytest.importorskip("torch")

STEPS = 60
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-14}
# torch's addcmul_ rounds once (an FMA, bitwise so on this machine), ours twice, as the contract
# wants. Adadelta's acc_delta feeds its own rounding back through sqrt(acc_delta + eps) undamped,
# so the two fp32 trajectories each drift ~7e-7 from the exact one, in different directions, and
# up to ~1.4e-6 from each other. For it, fp32 is held to the same bound against torch's fp64
# trajectory: the exact math, free of either side's fp32 rounding.
AGAINST_FP64 = {"Adadelta"}

# (our stateful optimizer, torch.optim class name, hyperparameters both take)
TRAJECTORIES = [
    (fo.SGD, "SGD", dict(lr=0.05)),
    (fo.SGD, "SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, maximize=True)),
    (fo.SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (fo.Adagrad, "Adagrad", dict(lr=0.05)),
    (fo.Adagrad, "Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1,
                                 maximize=True)),
    (fo.RMSprop, "RMSprop", dict(lr=0.01)),
    (fo.RMSprop, "RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01, maximize=True)),
    (fo.Adam, "Adam", dict(lr=0.01)),
    (fo.Adam, "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True)),
    (fo.Adam, "Adam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    (fo.Adam, "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05, decoupled_weight_decay=True)),
    (fo.AdamW, "AdamW", dict()),
    (fo.AdamW, "AdamW", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    (fo.Adamax, "Adamax", dict()),
    (fo.Adamax, "Adamax", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.05, maximize=True)),
    (fo.Adadelta, "Adadelta", dict()),
    (fo.Adadelta, "Adadelta", dict(lr=0.5, rho=0.95, eps=1e-4, weight_decay=0.05, maximize=True)),
    (fo.RAdam, "RAdam", dict()),
    (fo.RAdam, "RAdam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05, maximize=True)),
    (fo.RAdam, "RAdam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    (fo.NAdam, "NAdam", dict()),
    (fo.NAdam, "NAdam", dict(lr=0.01, betas=(0.8, 0.99), momentum_decay=0.01, weight_decay=0.05, maximize=True)),
    (fo.NAdam, "NAdam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
]


def label(entry):
    ours, torch_name, hyper = entry
    return f"{torch_name}({', '.join(f'{k}={v}' for k, v in hyper.items())})"


def trajectory_error(ours_class, torch_name, hyper, dtype, steps=STEPS, seed=0, torch_dtype=None):
    """Steps ours and torch's optimizer (in ``torch_dtype``, by default the same dtype) on the
    same params and gradients; returns the largest relative difference seen, over params and
    every state torch keeps, after every step."""
    rng = np.random.default_rng(seed)
    shapes = [(1000,), (37, 3), (5,)]
    initial = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [p.copy() for p in initial]
    ours = ours_class(params, **hyper)
    torch_params = [torch.tensor(p, dtype=torch_dtype) for p in initial]
    theirs = getattr(torch.optim, torch_name)(torch_params, foreach=False, **hyper)

    worst = 0.0

    def compare(a, b, what):
        nonlocal worst
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape, what
        scale = np.max(np.abs(b))
        err = np.max(np.abs(a - b)) / scale if scale else np.max(np.abs(a))
        worst = max(worst, err)

    for k in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        ours.step(grads)
        for p, g in zip(torch_params, grads):
            p.grad = torch.tensor(g, dtype=torch_dtype)
        theirs.step()
        for i, (p, q) in enumerate(zip(params, torch_params)):
            compare(p, q.numpy(), f"params[{i}]")
            torch_state = theirs.state[q]
            # torch's SGD keeps no step count (it tests for a missing momentum_buffer); ours does.
            assert set(ours.state[i]) - {"step"} == set(torch_state) - {"step"}, f"state names of params[{i}]"
            for name, value in torch_state.items():
                if name == "step":
                    assert ours.state[i]["step"] == int(value) == k + 1
                else:
                    compare(ours.state[i][name], value.numpy(), f"{name}[{i}]")
    return worst


@pytest.fixture
def torch_scalars_in(dtype):
    """torch keeps per-param scalar state (step, NAdam's mu_product) in its default dtype; ours
    is a double on the host. An fp64 run sets torch's to fp64 too, so both compute the same math."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("entry", TRAJECTORIES, ids=label)
def test_trajectory_matches_torch(entry, dtype, torch_scalars_in):
    exact = dtype == np.float32 and entry[1] in AGAINST_FP64
    err = trajectory_error(*entry, dtype, torch_dtype=torch.float64 if exact else None)
    against = " (against torch in fp64)" if exact else ""
    assert err <= TOLERANCE[dtype], f"{label(entry)} {np.dtype(dtype).name}{against}: max relative error {err:.3g}"


def test_a_different_rule_is_caught():
    """Guards the tolerance: AdamW against torch's Adam (L2 weight decay) must fail it."""
    assert trajectory_error(fo.AdamW, "Adam", dict(lr=0.01, weight_decay=0.05), np.float64, steps=3) > 1e-3
