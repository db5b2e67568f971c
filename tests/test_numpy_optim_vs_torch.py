"""The stateful NumPy optimizers against torch.optim: same semantics, defaults and state names, many steps.

Op order may differ from torch's (torch's CPU kernels use FMA and lerp; ours round every op of
reference.py), so results agree to a bound rather than bitwise. Ours, in float32 and in float64,
is compared after every step with an fp64 ground truth, torch's float64 run on the same params and
gradients (drawn in float32, upcast), the bound set by torch's own float32 run: conftest's Distances,
which derives it.
"""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import Distances, params_of, torch_default_dtype

torch = pytest.importorskip("torch")

STEPS = 60

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
    (fo.ASGD, "ASGD", dict()),
    (fo.ASGD, "ASGD", dict(lr=0.05, lambd=0.01, alpha=0.5, t0=10, weight_decay=0.05, maximize=True)),
    (fo.Rprop, "Rprop", dict()),
    (fo.Rprop, "Rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True)),
]


def label(entry):
    ours, torch_name, hyper = entry
    return f"{torch_name}({', '.join(f'{k}={v}' for k, v in hyper.items())})"


def trajectory(ours_class, torch_name, hyper, steps=STEPS, seed=0):
    """Steps ours (in float32 and float64) and torch's optimizer (in float32 and in float64: the truth)
    on the same params and gradients; returns the Distances of ours in float32 and in float64, over
    params and every state torch keeps, after every step."""
    rng = np.random.default_rng(seed)
    shapes = [(1000,), (37, 3), (5,)]
    initial = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours = {dtype: ours_class([p.astype(dtype) for p in initial], **hyper) for dtype in (np.float32, np.float64)}
    theirs = {dtype: getattr(torch.optim, torch_name)([torch.tensor(p, dtype=dtype) for p in initial], foreach=False,
                                                      **hyper) for dtype in (torch.float32, torch.float64)}
    distances = {dtype: Distances() for dtype in ours}

    for k in range(steps):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for dtype, opt in ours.items():
            opt.step([g.astype(dtype) for g in grads])
        for dtype, opt in theirs.items():
            for p, g in zip(params_of(opt), grads):
                p.grad = torch.tensor(g, dtype=dtype)
            with torch_default_dtype(dtype):
                opt.step()
        names = [f"params[{i}]" for i in range(len(shapes))]
        names += [f"{name}[{i}]" for i, p in enumerate(params_of(theirs[torch.float64]))
                  for name in sorted(theirs[torch.float64].state[p]) if name != "step"]
        peer, truth = ([t.numpy() for t in tensors(opt)] for opt in theirs.values())
        for dtype, opt in ours.items():
            for i, q in enumerate(params_of(theirs[torch.float64])):
                torch_state = theirs[torch.float64].state[q]
                # torch's SGD keeps no step count (it tests for a missing momentum_buffer); ours does.
                assert set(opt.state[i]) - {"step"} == set(torch_state) - {"step"}, f"state names of params[{i}]"
                if "step" in torch_state:
                    assert opt.state[i]["step"] == int(torch_state["step"]) == k + 1
            mine = params_of(opt) + [opt.state[i][name] for i in range(len(shapes))
                                  for name in sorted(opt.state[i]) if name != "step"]
            distances[dtype].record(mine, peer, truth, names)
    return distances


def tensors(opt):
    """A torch optimizer's params, then each param's states but the step count, by name."""
    return params_of(opt) + [opt.state[p][name] for p in params_of(opt)
                             for name in sorted(opt.state[p]) if name != "step"]


@pytest.mark.parametrize("entry", TRAJECTORIES, ids=label)
def test_trajectory_matches_torch(entry):
    for distances in trajectory(*entry).values():
        distances.check()


class Drifting(fo.Adam):
    """fo.Adam whose params then move 4 ulps up each step: a bias of the size rounding makes."""

    def step(self, grads):
        super().step(grads)
        for p in params_of(self):
            for _ in range(4):
                np.nextafter(p, np.inf, out=p)


@pytest.mark.parametrize("ours_class, torch_name, hyper", [
    (fo.AdamW, "Adam", dict(lr=0.01, weight_decay=0.05)),
    (lambda params, **h: fo.Adam(params, betas=(0.9, 0.998), **h), "Adam", dict(lr=0.01)),
    (Drifting, "Adam", dict(lr=0.01)),
], ids=["AdamW as Adam", "beta2 0.998 as 0.999", "4 ulps a step"])
def test_a_different_rule_is_caught(ours_class, torch_name, hyper):
    """Guards the bounds: each of these, compared with torch's Adam, must exceed them in both dtypes."""
    for distances in trajectory(ours_class, torch_name, hyper).values():
        share, what = distances.share()
        assert share > 1, what
