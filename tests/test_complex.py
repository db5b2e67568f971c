"""The functional API on complex arrays: each complex element is stepped as the pair of reals it stores,
as torch.optim steps complex params (view_as_real), on every backend and ISA level."""

import numpy as np
import pytest

import fusedoptim as fo
from conftest import CASES, assert_bitwise_equal, backends

COMPLEX = {np.float32: np.complex64, np.float64: np.complex128}


def operands(case, hyper, real_dtype, shape, seed):
    rng = np.random.default_rng(seed)

    def values(nonneg=False):
        x = rng.standard_normal(shape + (2,)).astype(real_dtype)
        return np.abs(x) if nonneg else x

    return values(), values(), {arg: values(nonneg) for arg, nonneg in case.used_states(hyper).items()}


def as_complex(x):
    return x.view(COMPLEX[x.dtype.type])[..., 0]


@pytest.mark.parametrize("real_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_complex_step_is_the_step_of_its_reals(case, real_dtype, isa):
    hyper = case.grid[-1]
    step = {"step": 3} if case.takes_step else {}
    for label, backend, level in [("numpy", "numpy", None)] + backends():
        if level is not None:
            fo.set_isa(level)
        param, grad, states = operands(case, hyper, real_dtype, (3, 5), seed=1)
        cparam, cgrad = as_complex(param.copy()), as_complex(grad.copy())
        cstates = {arg: as_complex(s.copy()) for arg, s in states.items()}
        assert cparam.shape == (3, 5) and cparam.dtype == COMPLEX[real_dtype]
        with np.errstate(all="ignore"):  # random states: a centered RMSprop may take the sqrt of a negative
            expected = case.functional(param, grad, **states, **hyper, **step, backend=backend)
            got = case.functional(cparam, cgrad, **cstates, **hyper, **step, backend=backend)
        assert got == expected  # a host state (NAdam's mu_product) too
        assert_bitwise_equal(cparam.view(real_dtype).reshape(param.shape), param, f"{case} {label}: param")
        for arg in states:
            assert_bitwise_equal(cstates[arg].view(real_dtype).reshape(param.shape), states[arg], f"{case} {label}: {arg}")


def test_complex_and_real_params_of_one_precision_share_a_call():
    case = next(c for c in CASES if c.name == "adam")
    param, grad, states = operands(case, {}, np.float32, (4,), seed=2)
    real = np.ones(6, np.float32)
    cparam = as_complex(param.copy())
    fo.adam_([cparam, real], [as_complex(grad.copy()), np.ones(6, np.float32)],
             [as_complex(states["exp_avgs"].copy()), np.zeros(6, np.float32)],
             [as_complex(states["exp_avg_sqs"].copy()), np.zeros(6, np.float32)], step=1)
    alone = param.copy()
    fo.adam_(alone, grad, states["exp_avgs"].copy(), states["exp_avg_sqs"].copy(), step=1)
    assert_bitwise_equal(cparam.view(np.float32).reshape(alone.shape), alone, "complex beside a real")
    with pytest.raises(TypeError, match=r"params\[1\] is float64 but params\[0\] is complex64"):
        fo.adam_([cparam, np.ones(6)], [cparam.copy(), np.ones(6)], [cparam.copy(), np.ones(6)],
                 [cparam.copy(), np.ones(6)], step=1)


@pytest.mark.parametrize("spoil, error, match", [
    (lambda ops: ops.__setitem__("grads", ops["grads"].real.copy()), TypeError, "grads is float32 but params is complex64"),
    (lambda ops: ops.__setitem__("params", ops["params"][:, ::2]), ValueError, "params is not C-contiguous"),
], ids=["real grad", "strided param"])
def test_complex_operands_are_checked_before_anything_changes(spoil, error, match):
    ops = {name: np.ones((2, 4), np.complex64) for name in ("params", "grads", "exp_avgs", "exp_avg_sqs")}
    spoil(ops)
    before = {k: v.copy() for k, v in ops.items()}
    with pytest.raises(error, match=match):
        fo.adam_(ops["params"], ops["grads"], ops["exp_avgs"], ops["exp_avg_sqs"], step=1)
    assert all(np.array_equal(ops[k], before[k]) for k in ops)


def test_stateful_numpy_optimizers_reject_complex_params():
    with pytest.raises(TypeError, match="stateful optimizers step float32 and float64"):
        fo.Adam([np.zeros(3, np.complex64)])
